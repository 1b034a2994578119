"""`specviz bench-page`: what a visitor waits for, measured in a real browser against a freshly started app.

Each round starts `python app.py` in a new process (nothing loaded in memory) and opens the page in headless
Chromium, then measures:
- page load -> the first step of the recorded showcase shown, and -> the second (the first *moving* step);
- Run pressed at once -> the first live token (cold: the model is still loading in the background, or not yet);
- Run pressed again after that run -> the first live token (warm: everything loaded).
With `--cold-disk` each round also gets an empty model cache folder (SPECVIZ_CACHE_DIR), so the first Run
also pays for de-quantising the model and calibrating kernels, as on a Space's first boot.

Needs Debian's chromium (/usr/bin/chromium) and the playwright Python package (the `test` extra). Run it on a
quiet machine: it times the CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
OUTPUT_TOKENS = ("#token-stream span.tok-accepted, #token-stream span.tok-recovered, "
                 "#token-stream span.tok-bonus, #token-stream span.tok-baseline")
STEP_OF = "() => (document.querySelector('#step-slider input[type=number]') || {}).value"
TIMEOUT_MS = 600_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(port: int, env: dict[str, str]) -> subprocess.Popen:
    """`python app.py` on `port`, returning once it answers HTTP."""
    env = {**os.environ, **env, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with status {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("app.py did not answer within 300 s")


def _run_to_first_token(page, max_new_tokens: int) -> float:
    """Press Run; seconds until the live run's first token is in the stream (the Run clears the stream first)."""
    page.fill("#max-new-tokens input[type=number]", str(max_new_tokens))
    page.press("#max-new-tokens input[type=number]", "Tab")
    start = time.perf_counter()
    page.click("#run")
    page.wait_for_function("() => (document.querySelector('#status') || {}).innerText?.includes('Running')",
                           timeout=TIMEOUT_MS)
    page.wait_for_selector(OUTPUT_TOKENS, timeout=TIMEOUT_MS)
    first = time.perf_counter() - start
    page.wait_for_function("() => (document.querySelector('#status') || {}).innerText?.includes('Finished run')",
                           timeout=TIMEOUT_MS)
    return first


def one_round(max_new_tokens: int, cold_disk: bool) -> dict:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        env = {"SPECVIZ_DB": f"{tmp}/runs.db"} | ({"SPECVIZ_CACHE_DIR": f"{tmp}/cache"} if cold_disk else {})
        port = _free_port()
        proc = _serve(port, env)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                start = time.perf_counter()
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_selector(OUTPUT_TOKENS, timeout=TIMEOUT_MS)
                first_step = time.perf_counter() - start
                page.wait_for_function(f"() => Number(({STEP_OF})()) >= 1", timeout=TIMEOUT_MS)
                moving = time.perf_counter() - start
                cold = _run_to_first_token(page, max_new_tokens)
                warm = _run_to_first_token(page, max_new_tokens)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(30)
    return {"first_step_s": first_step, "first_moving_step_s": moving, "run_first_token_cold_s": cold,
            "run_first_token_warm_s": warm}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="specviz bench-page", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh app processes to time (default 3)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="length of each live run")
    parser.add_argument("--cold-disk", action="store_true",
                        help="each round with an empty model cache (de-quantise and calibrate on the first Run)")
    parser.add_argument("--out", help="write the rounds and medians as JSON here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.max_new_tokens < 1:
        parser.error("--rounds and --max-new-tokens must be at least 1")
    if not Path(CHROMIUM).exists():
        parser.error(f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        parser.error("needs the playwright package: pip install -e \".[test]\"")
    rounds = []
    for i in range(args.rounds):
        rounds.append(one_round(args.max_new_tokens, args.cold_disk))
        print(json.dumps({"round": i, **{k: round(v, 2) for k, v in rounds[-1].items()}}), file=sys.stderr)
    medians = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    result = {"rounds": rounds, "median": medians, "cold_disk": args.cold_disk, "max_new_tokens": args.max_new_tokens}
    print(json.dumps({"median": {k: round(v, 2) for k, v in medians.items()}}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
