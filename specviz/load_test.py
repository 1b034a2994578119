"""Load test: a workshop room of visitors pressing Run at once, through the public API (gradio_client).

    specviz load-test                                  # 30 users within 60 s, on an app started in-process
    specviz load-test --users 30 --spread 30 --max-new-tokens 16 --json /tmp/load.json
    specviz load-test --url http://127.0.0.1:7860/     # against a running app (its own run log)

Each user is its own `gradio_client.Client` (its own session, like a browser tab): it opens the app (fetches
its config), waits a random moment within --spread seconds, then calls `/run` once with its own prompt (the
prompt suite's, cycled) and strategy (--strategies, cycled), greedy. While the users wait, a reader calls
`/history` every few seconds: the run log must answer without waiting behind model runs.

Per user it reports: the longest queue position and the first expected wait (ETA) the server announced, the
wait (submit to the handler's first update), the time to first token (submit to the first token on the page),
the total time, and any error. Then: how many runs the log holds for these users, how many finished, whether
each logged run is the user's own (prompt and strategy: no cross-talk), and the /history latencies.
With no --url, the app runs in-process with a temporary run log (removed afterwards unless --db is given).
Before the room, one 1-token run per strategy loads the models (as on a Space that is already up; --cold
skips it).
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_STRATEGIES = "ar,prompt_lookup,hybrid_tree,draft_model,early_exit,lookup_tree"
TOKEN_SPAN = 'class="tok tok-'
RUN_ID = re.compile(r"Finished run #(\d+)")


@dataclass
class UserResult:
    user: int
    strategy: str
    prompt: str
    max_rank: int | None = None  # the furthest place in the queue announced (0 = next)
    first_eta_s: float | None = None  # the first expected wait the server announced
    wait_s: float | None = None  # submit -> the handler's first update (left the queue)
    ttft_s: float | None = None  # submit -> first token on the page
    total_s: float | None = None  # submit -> last update
    run_id: int | None = None
    error: str | None = None


def _status_text(output) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", output[0])) if output and isinstance(output[0], str) else ""


class Room:
    """The users and the reader, against one app URL."""

    def __init__(self, url: str, users: int, spread_s: float, max_new_tokens: int, strategies: list[str], seed: int):
        from specviz.prompts import load_prompt_suite

        self.url = url
        prompts = [p.prompt for p in load_prompt_suite()]
        rng = random.Random(seed)
        self.results = [UserResult(i, strategies[i % len(strategies)], prompts[i % len(prompts)]) for i in range(users)]
        self.delays = sorted(rng.uniform(0, spread_s) for _ in range(users))
        self.max_new_tokens = max_new_tokens
        self.history_latencies: list[float] = []
        self.history_errors: list[str] = []
        self._done = threading.Event()

    def warm_up(self, strategies: list[str]) -> None:
        """One 1-token run per strategy first, so the room meets a Space whose models are loaded (--cold: not)."""
        from gradio_client import Client

        client = Client(self.url, verbose=False)
        for strategy in strategies:
            client.predict(prompt="Hello.", strategy=strategy, max_new_tokens=1, api_name="/run")

    def run(self) -> float:
        """Every user in its own thread, the reader in another; returns the wall time."""
        start = time.perf_counter()
        threads = [threading.Thread(target=self._user, args=(r, start + d), daemon=True)
                   for r, d in zip(self.results, self.delays, strict=True)]
        reader = threading.Thread(target=self._reader, daemon=True)
        for t in threads:
            t.start()
        reader.start()
        for t in threads:
            t.join()
        self._done.set()
        reader.join()
        return time.perf_counter() - start

    def _user(self, r: UserResult, at: float) -> None:
        from gradio_client import Client

        try:
            client = Client(self.url, verbose=False)  # opening the page: a session of its own
            time.sleep(max(0.0, at - time.perf_counter()))
            submitted = time.perf_counter()
            job = client.submit(prompt=r.prompt, strategy=r.strategy, max_new_tokens=self.max_new_tokens,
                                api_name="/run")
            watcher = threading.Thread(target=self._watch, args=(job, r), daemon=True)
            watcher.start()
            last = None
            for output in job:
                now = time.perf_counter() - submitted
                if r.wait_s is None:
                    r.wait_s = now
                if r.ttft_s is None and any(isinstance(x, str) and TOKEN_SPAN in x for x in output):
                    r.ttft_s = now
                last = output
            last = job.result(timeout=5) if last is None else last
            r.total_s = time.perf_counter() - submitted
            watcher.join(timeout=1)
            status = _status_text(last)
            match = RUN_ID.search(status)
            if match:
                r.run_id = int(match.group(1))
            else:
                r.error = f"no finished run: {status[:200]}"
        except Exception as exc:  # one user's failure is a result, not the end of the test
            r.error = f"{type(exc).__name__}: {exc}"[:300]

    def _watch(self, job, r: UserResult) -> None:
        """The queue position and expected wait the server announces to this user while it waits."""
        while not job.done():
            status = job.status()
            if status.rank is not None and status.code.name == "IN_QUEUE":
                r.max_rank = max(status.rank, r.max_rank or 0)
                if r.first_eta_s is None and status.eta is not None:
                    r.first_eta_s = float(status.eta)
            time.sleep(0.1)

    def _reader(self) -> None:
        """The run log while the room waits: /history every 3 s."""
        from gradio_client import Client

        client = Client(self.url, verbose=False)
        while not self._done.wait(3.0):
            start = time.perf_counter()
            try:
                client.predict(strategy_filter="all", search_text="", api_name="/history")
                self.history_latencies.append(time.perf_counter() - start)
            except Exception as exc:
                self.history_errors.append(f"{type(exc).__name__}: {exc}"[:200])


def check_log(results: list[UserResult], store) -> dict:
    """The runs the users were told about, read back from the log: logged, finished, and each the user's own."""
    logged = finished = mixed = 0
    for r in results:
        if r.run_id is None:
            continue
        run = store.get_run(r.run_id)
        if run is None:
            continue
        logged += 1
        finished += run["status"] == "finished"
        if (run["prompt"], run["strategy"]) != (r.prompt, r.strategy):
            mixed += 1
    return {"runs_reported": sum(r.run_id is not None for r in results), "runs_logged": logged,
            "runs_finished": finished, "runs_not_the_users_own": mixed}


def _quantiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    values = sorted(values)
    p90 = values[min(len(values) - 1, round(0.9 * (len(values) - 1)))]
    return f"median {statistics.median(values):.1f} s, p90 {p90:.1f} s, max {values[-1]:.1f} s"


def _cell(x) -> str:
    return "" if x is None else (f"{x:.1f}" if isinstance(x, float) else str(x))


def report(results: list[UserResult], log: dict, history: list[float], history_errors: list[str], wall_s: float) -> str:
    lines = ["| user | strategy | max queue pos | first ETA s | wait s | first token s | total s | run | error |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        pos = None if r.max_rank is None else r.max_rank + 1
        lines.append(f"| {r.user} | {r.strategy} | {_cell(pos)} | {_cell(r.first_eta_s)} | {_cell(r.wait_s)} | "
                     f"{_cell(r.ttft_s)} | {_cell(r.total_s)} | {_cell(r.run_id)} | {r.error or ''} |")
    errors = [r for r in results if r.error]
    lines += [
        "",
        f"users: {len(results)}, errors: {len(errors)}, wall: {wall_s:.1f} s",
        f"wait (submit -> running): {_quantiles([r.wait_s for r in results if r.wait_s is not None])}",
        f"time to first token: {_quantiles([r.ttft_s for r in results if r.ttft_s is not None])}",
        f"total: {_quantiles([r.total_s for r in results if r.total_s is not None])}",
        f"told their queue position: {sum(r.max_rank is not None for r in results)} users "
        f"(furthest: {max((r.max_rank + 1 for r in results if r.max_rank is not None), default=0)})",
        f"runs: {log['runs_reported']} reported, {log['runs_logged']} logged, {log['runs_finished']} finished, "
        f"{log['runs_not_the_users_own']} not the user's own",
        f"/history while the room waited: {len(history)} calls, {_quantiles(history)}, {len(history_errors)} errors",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="specviz load-test", description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=30)
    p.add_argument("--spread", type=float, default=60.0, help="seconds over which the users press Run (default 60)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--strategies", default=DEFAULT_STRATEGIES, help=f"cycled over the users (default {DEFAULT_STRATEGIES})")
    p.add_argument("--seed", type=int, default=0, help="for the users' start times")
    p.add_argument("--cold", action="store_true", help="no warm-up: the first users wait for the models to load")
    p.add_argument("--url", help="a running app; default: start one in-process")
    p.add_argument("--db", help="the run log to check (default: the in-process app's temporary one; with --url: "
                               "the default RunStore path)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from engine import ModelCache
    from specviz.store import RunStore

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    with contextlib.ExitStack() as stack:
        if args.url:
            url, store = args.url, RunStore(args.db)
        else:
            from specviz.ui import build_app, launch_local

            db = args.db or str(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "runs.db")
            store = RunStore(db)
            demo = build_app(ModelCache(max_models=2), store)  # as app.py builds it
            url = launch_local(demo)
            stack.callback(demo.close)
        room = Room(url, args.users, args.spread, args.max_new_tokens, strategies, args.seed)
        if not args.cold:
            room.warm_up(strategies)
        print(f"{args.users} users against {url}, pressing Run within {args.spread:g} s "
              f"({args.max_new_tokens} new tokens each)…", file=sys.stderr)
        wall = room.run()
        log = check_log(room.results, store)
        print(report(room.results, log, room.history_latencies, room.history_errors, wall))
        if args.json:
            Path(args.json).write_text(json.dumps({
                "users": [asdict(r) for r in room.results], "log": log, "wall_s": wall,
                "history_latencies_s": room.history_latencies, "history_errors": room.history_errors,
            }, indent=2))
    ok = not any(r.error for r in room.results) and log["runs_finished"] == args.users and not log["runs_not_the_users_own"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
