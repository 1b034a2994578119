"""specviz.compare.CompareRace on the tiny models: updates of concurrent sides interleave both ways, each
side reproduces its solo run under greedy, stop ends every side promptly (no thread left), and an error
on one side is reported as an update while the other sides go on."""

from __future__ import annotations

import threading
import time

import pytest

from engine import LoadedModel, ModelCache, SamplingConfig, parse_strategy
from specviz.compare import BASELINE, CompareRace, RaceSide, SideUpdate, with_ar_baseline
from specviz.runner import RunRequest, Runner
from specviz.store import RunStore

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPT = "t3 t5 t7 t11 t2 t9 t3 t5"  # the tiny models' fake tokenizer encodes "tN" as token N
STRATEGIES = {
    "ar": parse_strategy("ar"),
    "lookup": parse_strategy("prompt_lookup"),
    "drafter": parse_strategy("draft_model", {"drafter": "tiny-noisy", "vocab_trim": "0"}),
}
WAIT_S = 10.0  # the most any gate or join waits: a hung thread fails the test instead of hanging it


@pytest.fixture(scope="module")
def models(tiny_target, tiny_noisy_drafter) -> ModelCache:
    target = LoadedModel("tiny-target", tiny_target.model, tiny_target.tokenizer)
    by_spec = {"tiny-target": target, "tiny-noisy": tiny_noisy_drafter}
    return ModelCache(max_models=4, loader=lambda spec, progress=None: by_spec[spec])


def request(strategy: str, max_new_tokens: int = 16) -> RunRequest:
    return RunRequest(prompt=PROMPT, strategy=STRATEGIES[strategy], sampling=SamplingConfig(temperature=0.0),
                      max_new_tokens=max_new_tokens, target="tiny-target", raw=True, source="ui")


def solo_token_ids(models: ModelCache, strategy: str, max_new_tokens: int = 16) -> list[int]:
    runner = Runner(models)
    return list(runner.stream(runner.prepare(request(strategy, max_new_tokens))))[-1].token_ids


def run_race(runner: Runner, sides: dict[str, str], mode: str, max_new_tokens: int = 16) -> tuple[CompareRace, list[SideUpdate]]:
    race = CompareRace(runner, [RaceSide(name, request(s, max_new_tokens)) for name, s in sides.items()], mode)
    messages = list(race.prepare())
    assert all(side in sides for side, _ in messages)
    updates = list(race.updates(poll_s=0.05))
    assert race.join(WAIT_S)
    return race, updates


def no_race_thread_alive() -> bool:
    return not any(t.name.startswith("specviz-compare") and t.is_alive() for t in threading.enumerate())


# --------------------------------------------------------------------------- runners that misbehave on purpose


class GatedRunner(Runner):
    """The side `first` makes its first step before the other may make one, then waits for the other's first
    step: the updates begin first, other, with more of first's to come, which only real concurrency can produce
    (one after another, the gates would time out)."""

    def __init__(self, models: ModelCache, first: str):
        super().__init__(models)
        self.first = first
        self.first_stepped, self.other_stepped = threading.Event(), threading.Event()

    def stream(self, prepared):
        is_first = prepared.request.strategy.name == STRATEGIES[self.first].name
        mine, theirs = (self.first_stepped, self.other_stepped) if is_first else (self.other_stepped, self.first_stepped)
        updates = super().stream(prepared)
        try:
            for i, update in enumerate(updates):
                if i == 0 and not is_first:
                    assert theirs.wait(WAIT_S), "the other side never stepped: the sides do not run concurrently"
                yield update
                if i == 0:
                    mine.set()
                    if is_first:
                        assert theirs.wait(WAIT_S)
        finally:
            updates.close()


class SlowRunner(Runner):
    """Every step takes at least `step_s`: a stop must take effect long before a run could end."""

    step_s = 0.05

    def stream(self, prepared):
        updates = super().stream(prepared)
        try:
            for update in updates:
                time.sleep(self.step_s)
                yield update
        finally:
            updates.close()


class FailingRunner(Runner):
    """Runs of `failing` raise in the engine at their third step (the runner logs them as errors)."""

    def __init__(self, models: ModelCache, store: RunStore, failing: str):
        super().__init__(models, store)
        self.failing = STRATEGIES[failing].name

    def prepare(self, request, progress=None):
        prepared = super().prepare(request, progress)
        if request.strategy.name == self.failing:
            generate = prepared.decoder.generate

            def failing_generate(prompt_ids, max_new_tokens):
                for i, event in enumerate(generate(prompt_ids, max_new_tokens)):
                    if i == 2:
                        raise RuntimeError("boom")
                    yield event

            prepared.decoder.generate = failing_generate
        return prepared


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("first", ["ar", "lookup"])
def test_concurrent_updates_arrive_in_both_orders(models, first):
    sides = {"A": "ar", "B": "lookup"}
    race, updates = run_race(GatedRunner(models, first), sides, "concurrent")
    other = "B" if first == "ar" else "A"
    first_side = "A" if first == "ar" else "B"
    steps = [u.side for u in updates if u.kind == "step"]
    assert steps[:2] == [first_side, other] and first_side in steps[2:]  # first -> other, and later other -> first
    assert all(r.status == "finished" for r in race.results.values())


def test_sequential_mode_runs_one_side_after_the_other(models):
    race, updates = run_race(Runner(models), {"A": "lookup", "B": "ar"}, "sequential")
    sides = [u.side for u in updates]
    assert sides.index("B") > max(i for i, s in enumerate(sides) if s == "A")  # A closed before B's first update
    assert [u.kind for u in updates if u.side == "A"][-1] == "closed"
    assert all(r.status == "finished" for r in race.results.values())


@pytest.mark.parametrize("mode", ["concurrent", "sequential"])
def test_each_side_reproduces_its_solo_run_under_greedy(models, tmp_path, mode):
    store = RunStore(tmp_path / "runs.db")
    sides = {"A": "ar", "B": "lookup", "C": "drafter"}  # N sides: nothing in the race names two
    race, updates = run_race(Runner(models, store), sides, mode)
    solo = solo_token_ids(models, "ar")
    for name, strategy in sides.items():
        result = race.results[name]
        assert result.status == "finished" and result.error is None
        assert result.token_ids == solo_token_ids(models, strategy) == solo  # lossless: all equal ar's
        steps = [u.step for u in updates if u.side == name and u.kind == "step"]
        assert [t.token_id for s in steps for t in s.event.new_tokens] == result.token_ids  # the new events add up
        assert [s.event for s in steps] == result.events
        assert store.get_run(result.run_id)["status"] == "finished"
    assert [u.kind for u in updates].count("closed") == len(sides)
    assert no_race_thread_alive()


@pytest.mark.parametrize("mode, how", [("concurrent", "stop"), ("sequential", "stop"), ("concurrent", "close")])
def test_stop_ends_every_side_promptly_and_leaves_no_thread(models, tmp_path, mode, how):
    store = RunStore(tmp_path / "runs.db")
    max_new = 50  # 50 steps of ar: at least 5 s at SlowRunner's pace
    sides = [RaceSide("A", request("ar", max_new)), RaceSide("B", request("drafter", max_new))]
    race = CompareRace(SlowRunner(models, store), sides, mode)
    list(race.prepare())
    batches = race.batches(poll_s=0.05)
    seen = next(batches)  # the first step has arrived
    started = time.monotonic()
    if how == "stop":
        race.stop()
        seen += [u for batch in batches for u in batch]  # ends once every side is closed
        assert {u.side for u in seen if u.closed} == {"A", "B"}
    else:
        batches.close()  # what Gradio does on Stop: the race stops, nobody reads its updates any more
    assert race.join(WAIT_S) and no_race_thread_alive()
    assert time.monotonic() - started < 2.0
    runs = store.list_runs()
    assert len(runs) == (1 if mode == "sequential" else 2)  # in sequence, B never began
    assert all(r["status"] == "stopped" and r["new_tokens"] < max_new for r in runs)
    if how == "stop":
        assert all(r.status in ("stopped", "waiting") and len(r.token_ids) < max_new for r in race.results.values())
    if mode == "sequential":
        assert race.results["B"].run_id is None


@pytest.mark.parametrize("mode, sides", [("concurrent", {"A": "ar", "B": "lookup"}),
                                         ("sequential", {"A": "lookup", "B": "ar"})])
def test_an_error_on_one_side_is_an_update_and_the_other_side_finishes(models, tmp_path, mode, sides):
    store = RunStore(tmp_path / "runs.db")
    failing = next(name for name, s in sides.items() if s == "lookup")
    other = next(name for name in sides if name != failing)
    race, updates = run_race(FailingRunner(models, store, "lookup"), sides, mode)
    errors = [u for u in updates if u.kind == "error"]
    assert [u.side for u in errors] == [failing] and str(errors[0].error) == "boom"
    after_error = [u.kind for u in updates[updates.index(errors[0]) + 1:] if u.side == failing]
    assert after_error == ["closed"]
    bad, good = race.results[failing], race.results[other]
    assert bad.status == "error" and bad.error == "internal error (RuntimeError): boom" and len(bad.events) == 2
    assert store.get_run(bad.run_id)["status"] == "error"
    assert good.status == "finished" and good.token_ids == solo_token_ids(models, "ar")
    assert no_race_thread_alive()


def test_a_failed_preparation_raises_before_anything_runs(models, tmp_path):
    store = RunStore(tmp_path / "runs.db")
    bad = RunRequest(prompt=PROMPT, strategy=parse_strategy("draft_model", {"drafter": "no-such-model", "vocab_trim": "0"}),
                     target="tiny-target", raw=True)
    race = CompareRace(Runner(models, store), [RaceSide("A", request("ar")), RaceSide("B", bad)])
    with pytest.raises(Exception):
        list(race.prepare())
    with pytest.raises(RuntimeError, match="prepare"):
        next(race.updates())
    assert store.list_runs() == [] and no_race_thread_alive()


def test_the_ar_baseline_is_an_ar_side_or_an_extra_one():
    ar, lookup = STRATEGIES["ar"], STRATEGIES["lookup"]
    assert with_ar_baseline([("A", ar), ("B", lookup)]) == ([("A", ar), ("B", lookup)], "A")
    assert with_ar_baseline([("A", lookup), ("B", ar)])[1] == "B"
    sides, baseline = with_ar_baseline([("A", lookup), ("B", lookup)])
    assert baseline == BASELINE and [name for name, _ in sides] == ["A", "B", BASELINE] and sides[2][1].name == "ar"
    with pytest.raises(ValueError, match="unique"):
        CompareRace(None, [RaceSide("A", request("ar")), RaceSide("A", request("lookup"))])
