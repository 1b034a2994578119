"""Crash safety of the SQLite run log (issue 15, item 6).

A process killed with SIGKILL mid-run leaves a log that passes `PRAGMA integrity_check`, holds every step
it committed, and shows its runs 'running' until the next `RunStore` open marks them "interrupted". Runs of
live processes, and of other hosts or pid namespaces under this boot, stay 'running'.

The first tests forge owners on rows (no model, fast). The last three kill real subprocesses on the real
embedded model: a CLI run, a benchmark (its --logging-overhead runs are the ones it logs) and a comparison
(the `CompareRace` behind the Compare tab, two strategies in two threads).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from specviz.store import INTERRUPTED, RUNNING, SCHEMA_VERSION, RunOwner, RunStore, _proc_stat
from test_store import make_event, start

REPO_ROOT = Path(__file__).resolve().parent.parent
STEP_DEADLINE_S = 240.0  # model load + first steps; generous because the test machines are shared and slow
LONG_PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a map. Use many chapters."

needs_proc = pytest.mark.skipif(RunOwner.of_this_process().token is None,
                                reason="owner tokens need Linux /proc (pid reuse cannot be told elsewhere)")


# -- helpers ---------------------------------------------------------------------------------------

def set_owner(path: Path, run_id: int, host: str | None, pid: int | None, token: str | None) -> None:
    """Rewrite a run's owner, as if another process had started it."""
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET owner_host = ?, owner_pid = ?, owner_token = ? WHERE id = ?",
                     (host, pid, token, run_id))
    conn.close()


def token_of(pid: int, start: str | None = None) -> str:
    """The Linux owner token of a pid on this host (its start time from /proc unless given)."""
    me = RunOwner.of_this_process()
    boot_and_namespace = me.token.rsplit(":", 1)[0]
    return f"{boot_and_namespace}:{start or _proc_stat(pid)[1]}"


def status_of(path: Path, run_id: int) -> str:
    with sqlite3.connect(path) as conn:
        status = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
    conn.close()
    return status


def socket_host() -> str:
    return RunOwner.of_this_process().host


def dead_pid() -> int:
    """The pid of a child that has ended and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# -- the recovery rule on forged owners (fast) -----------------------------------------------------

def test_dead_owner_is_interrupted_live_owner_stays_running(tmp_path):
    """A run whose process has ended becomes interrupted with the totals of its steps; this live process's
    run, and a finished run, are left alone."""
    path = tmp_path / "runs.db"
    store = RunStore(path)
    mine, dead, done = start(store), start(store), start(store)
    seq = 0
    for i in range(3):
        event = make_event(i)
        store.log_step(dead, event, first_seq=seq)
        seq += len(event.new_tokens)
    store.finish_run(done, status="finished", token_ids=[], text="", metrics=None, stop_reason="eos")
    assert store.get_run(mine)["owner_pid"] == os.getpid()  # start_run records its owner
    set_owner(path, dead, socket_host(), dead_pid(), None)

    reopened = RunStore(path)
    assert reopened.recovered == [dead]
    run = reopened.get_run(dead)
    assert run["status"] == INTERRUPTED and run["finished"] == 0
    assert run["steps"] == 3 and run["new_tokens"] == seq and run["finished_at"] is None
    assert len(json.loads(run["output_token_ids"])) == seq and run["stop_reason"] is None
    assert len(reopened.load_events(dead)) == 3  # the steps are kept and replayable
    assert reopened.get_run(mine)["status"] == RUNNING
    assert reopened.get_run(done)["status"] == "finished"
    assert RunStore(path).recovered == []  # marked once


@needs_proc
def test_pid_reuse_boot_and_namespace(tmp_path):
    """The pid alone is not the owner: a live pid that started at another time is a later process; a process
    of another boot (of this host, or of another machine, which cannot share a WAL log with this one) has
    ended; another pid namespace and another host of this boot cannot be judged."""
    path = tmp_path / "runs.db"
    store = RunStore(path)
    me = RunOwner.of_this_process()
    boot, namespace, my_start = me.token.split(":")[1:]
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        runs = {name: start(store) for name in
                ("reused_me", "reused_child", "live_child", "other_boot", "other_namespace", "other_host",
                 "other_host_other_boot")}
        set_owner(path, runs["reused_me"], me.host, me.pid, f"linux:{boot}:{namespace}:{int(my_start) - 1}")
        set_owner(path, runs["reused_child"], me.host, sleeper.pid, token_of(sleeper.pid, "1"))
        set_owner(path, runs["live_child"], me.host, sleeper.pid, token_of(sleeper.pid))
        set_owner(path, runs["other_boot"], me.host, me.pid, f"linux:not-this-boot:{namespace}:{my_start}")
        set_owner(path, runs["other_namespace"], me.host, dead_pid(), f"linux:{boot}:1:{my_start}")
        set_owner(path, runs["other_host"], me.host + "-elsewhere", dead_pid(), me.token)
        set_owner(path, runs["other_host_other_boot"], me.host + "-elsewhere", me.pid,
                  f"linux:not-this-boot:{namespace}:{my_start}")
        recovered = RunStore(path).recovered
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sorted(recovered) == sorted(runs[name] for name in
                                       ("reused_me", "reused_child", "other_boot", "other_host_other_boot"))
    for name in ("live_child", "other_namespace", "other_host"):
        assert status_of(path, runs[name]) == RUNNING, name


@needs_proc
def test_zombie_owner_counts_as_ended(tmp_path):
    """A killed owner not yet reaped by its parent (a zombie) has ended."""
    path = tmp_path / "runs.db"
    run_id = start(RunStore(path))
    child = subprocess.Popen(["sleep", "60"])
    token = token_of(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (_proc_stat(child.pid) or ("Z",))[0] != "Z":  # not waited for: it stays a zombie
        assert time.monotonic() < deadline, "the killed child never became a zombie"
        time.sleep(0.01)
    try:
        set_owner(path, run_id, socket_host(), child.pid, token)
        assert RunStore(path).recovered == [run_id]
    finally:
        child.wait()


def test_log_without_owners_marks_its_running_runs_interrupted(tmp_path):
    """A version-6 log has no owner columns: it gains them, and its 'running' runs (no live owner can be known)
    become interrupted with their steps."""
    path = tmp_path / "v6.db"
    old = RunStore(path)
    running, stopped = start(old), start(old)
    old.log_step(running, make_event(0), first_seq=0)
    old.finish_run(stopped, status="stopped", token_ids=[], text="", metrics=None, stop_reason=None)
    with old.db.conn:  # what SpecViz 6 wrote
        for column in ("owner_host", "owner_pid", "owner_token"):
            old.db.execute(f"ALTER TABLE runs DROP COLUMN {column}")
        old.db.execute("PRAGMA user_version = 6")
    old.close()
    store = RunStore(path)
    assert {"owner_host", "owner_pid", "owner_token"} <= set(store.db["runs"].columns_dict)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
    assert store.recovered == [running]
    assert store.get_run(running)["steps"] == 1 and store.get_run(stopped)["status"] == "stopped"


def test_a_misjudged_run_still_finishes(tmp_path):
    """Recovery only touches 'running' rows; a run marked interrupted that does go on is finished by its
    own finish_run."""
    path = tmp_path / "runs.db"
    store = RunStore(path)
    run_id = start(store)
    set_owner(path, run_id, socket_host(), None, None)
    assert RunStore(path).recovered == [run_id]
    store.finish_run(run_id, status="finished", token_ids=[1], text="x", metrics=None, stop_reason="eos")
    assert store.get_run(run_id)["status"] == "finished"


def test_a_step_that_does_not_parse_does_not_keep_the_log_closed(tmp_path):
    """Recovery's totals are a convenience: a damaged step still lets the log open, the run marked without them."""
    path = tmp_path / "runs.db"
    store = RunStore(path)
    run_id = start(store)
    store.log_step(run_id, make_event(0), first_seq=0)
    set_owner(path, run_id, socket_host(), dead_pid(), None)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE steps SET k_inputs = '{not json' WHERE run_id = ?", (run_id,))
    conn.close()
    reopened = RunStore(path)
    assert reopened.recovered == [run_id]
    run = reopened.get_run(run_id)
    assert run["status"] == INTERRUPTED and run["steps"] is None


# -- killing real processes ------------------------------------------------------------------------

def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def logged_steps(path: Path) -> dict[int, tuple[str, int]]:
    """{run id: (status, committed steps)} as a fresh reader sees the log now ({} while it has no tables)."""
    try:
        conn = sqlite3.connect(path, timeout=5)
        try:
            rows = conn.execute("SELECT r.id, r.status, COUNT(s.step_index) FROM runs r "
                                "LEFT JOIN steps s ON s.run_id = r.id GROUP BY r.id").fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError:  # no such table yet (the child is creating the schema), or busy
        return {}
    return {run_id: (status, steps) for run_id, status, steps in rows}


def spawn(args: list[str], output: Path, **env: str) -> subprocess.Popen:
    """Start a child in the repository with its stdout and stderr going to `output` (a pipe could fill up and
    stall it)."""
    with open(output, "wb") as out:
        return subprocess.Popen(args, cwd=REPO_ROOT, env=child_env(**env), stdout=out, stderr=subprocess.STDOUT)


def kill_when_logged(proc: subprocess.Popen, output: Path, find_db, runs: int,
                     steps: int) -> tuple[Path, dict[int, int]]:
    """Poll until `runs` runs in the child's log have at least `steps` committed steps each, then SIGKILL it.

    `find_db()` gives the log's path once it exists (None before). Returns the path and the step counts seen
    just before the kill. Fails with the child's output if it ends first, or nothing shows up by the deadline.
    """
    deadline = time.monotonic() + STEP_DEADLINE_S
    seen: dict[int, tuple[str, int]] = {}
    try:
        while True:
            if proc.poll() is not None:
                tail = output.read_text(errors="replace")[-3000:]
                pytest.fail(f"the child ended (exit {proc.returncode}) before the kill; log {seen}; output:\n{tail}")
            path = find_db()
            seen = logged_steps(path) if path is not None else {}
            if len(seen) >= runs and all(n >= steps for _, n in seen.values()):
                os.kill(proc.pid, signal.SIGKILL)  # mid-run: no finally, no finish_run, no WAL checkpoint
                break
            if time.monotonic() > deadline:
                pytest.fail(f"no {runs} run(s) with {steps} logged steps within {STEP_DEADLINE_S:.0f} s; log {seen}")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert all(status == RUNNING for status, _ in seen.values()), f"a run ended before the kill: {seen}"
    return path, {run_id: n for run_id, (_, n) in seen.items()}


def check_after_kill(path: Path, seen: dict[int, int]) -> None:
    """The killed child's log: intact, every step seen is there with its tokens, the runs 'running' until a
    RunStore opens it, then interrupted with the same steps."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        for run_id, steps_seen in seen.items():
            status, finished = conn.execute("SELECT status, finished FROM runs WHERE id = ?", (run_id,)).fetchone()
            assert (status, finished) == (RUNNING, 0), f"run {run_id} ended between the last poll and the kill"
            indexes = [r[0] for r in conn.execute("SELECT step_index FROM steps WHERE run_id = ? ORDER BY step_index",
                                                  (run_id,))]
            assert len(indexes) >= steps_seen and indexes == list(range(len(indexes)))
            # every step committed whole: its output tokens are there, in order, and nothing beyond the last step
            seqs = conn.execute("SELECT seq, step_index FROM output_tokens WHERE run_id = ? ORDER BY seq",
                                (run_id,)).fetchall()
            assert [s for s, _ in seqs] == list(range(len(seqs)))
            assert sorted({i for _, i in seqs}) == indexes
            orphans = conn.execute("SELECT COUNT(*) FROM draft_tokens d WHERE d.run_id = ? AND NOT EXISTS "
                                   "(SELECT 1 FROM steps s WHERE s.run_id = d.run_id AND s.step_index = d.step_index)",
                                   (run_id,)).fetchone()[0]
            assert orphans == 0
        totals = {run_id: conn.execute("SELECT COUNT(*) FROM steps WHERE run_id = ?", (run_id,)).fetchone()[0]
                  for run_id in seen}
    finally:
        conn.close()

    store = RunStore(path)  # the next start
    assert sorted(store.recovered) == sorted(seen)
    for run_id, steps in totals.items():
        run = store.get_run(run_id)
        assert run["status"] == INTERRUPTED and run["finished"] == 0
        assert run["steps"] == steps == len(store.load_events(run_id))
    assert store.db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    store.close()


@pytest.mark.slow
def test_kill_during_cli_run(tmp_path):
    db = tmp_path / "cli.db"
    output = tmp_path / "cli.out"
    proc = spawn([sys.executable, "-m", "specviz.cli", "run", "--prompt", LONG_PROMPT, "--strategy", "ar",
                  "--max-new-tokens", "400"], output, SPECVIZ_DB=str(db))
    path, seen = kill_when_logged(proc, output, lambda: db if db.exists() else None, runs=1, steps=3)
    check_after_kill(path, seen)


@pytest.mark.slow
def test_kill_during_benchmark(tmp_path):
    """`specviz bench --logging-overhead` logs its runs to overhead.db in a temporary folder (under TMPDIR);
    the kill lands in its logged prompt_lookup run."""
    scratch = tmp_path / "bench-tmp"
    scratch.mkdir()

    def find_db() -> Path | None:
        found = sorted(scratch.glob("*/overhead.db"))
        return found[0] if found else None

    output = tmp_path / "bench.out"
    proc = spawn([sys.executable, "-m", "specviz.cli", "bench", "--strategies", "ar", "--categories", "chat",
                  "--per-category", "1", "--max-new-tokens", "32", "--threads", "1", "--logging-overhead"],
                 output, TMPDIR=str(scratch))
    path, seen = kill_when_logged(proc, output, find_db, runs=1, steps=3)
    check_after_kill(path, seen)


COMPARE_SCRIPT = textwrap.dedent("""
    # Two strategies raced as the Compare tab races them (one thread per side), logged to $SPECVIZ_DB.
    import sys
    from engine import ModelCache, parse_strategy
    from specviz.compare import CompareRace, RaceSide
    from specviz.runner import RunRequest, Runner, new_group_id
    from specviz.store import RunStore

    prompt = sys.argv[1]
    runner = Runner(ModelCache(), RunStore())
    group = new_group_id()
    race = CompareRace(runner, [
        RaceSide(name, RunRequest(prompt=prompt, strategy=parse_strategy(strategy), max_new_tokens=400,
                                  source="ui", group_id=group))
        for name, strategy in (("A", "ar"), ("B", "prompt_lookup"))
    ], "concurrent")
    for _ in race.prepare():
        pass
    for _ in race.updates():
        pass
""")


@pytest.mark.slow
def test_kill_during_comparison(tmp_path):
    db = tmp_path / "compare.db"
    script = tmp_path / "compare_race.py"
    script.write_text(COMPARE_SCRIPT)
    output = tmp_path / "compare.out"
    proc = spawn([sys.executable, str(script), LONG_PROMPT], output, SPECVIZ_DB=str(db))
    path, seen = kill_when_logged(proc, output, lambda: db if db.exists() else None, runs=2, steps=2)
    with sqlite3.connect(path) as conn:  # the two sides of one comparison
        groups = {r[0] for r in conn.execute("SELECT group_id FROM runs")}
    conn.close()
    assert len(groups) == 1 and None not in groups
    check_after_kill(path, seen)
