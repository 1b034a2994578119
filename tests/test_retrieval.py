"""Retrieval-augmented drafting (RASD, chain version) and document attachments.

- retrieval, pruning and fusion as table-driven cases on token lists;
- the proposer's drafter cache stays in step with the context (checked against fresh forward passes);
- greedy output equals the autoregressive baseline through the public wiring (tiny models) and
  on the real model for a rag prompt with its passage as the document;
- sampling: the first two output tokens follow the target's distribution (chi-square, fixed seeds)
  along the retrieved/retrieved, retrieved/drafter and pruned paths;
- the document reaches the run: SQLite round trip, the CLI's --document, the explorer's /run API.
"""

from __future__ import annotations

import html
import sqlite3

import pytest
import torch

from conftest import TINY_VOCAB, FakeTokenizer, chi_square_critical, chi_square_statistic, load_prompts
from engine import (
    ConfigError,
    LoadedModel,
    ModelCache,
    SamplingConfig,
    SpeculativeDecoder,
    build_decoder,
    early_exit_drafter,
    encode_prompt,
    parse_strategy,
    run_to_completion,
)
from engine.drafting.policies import ConstantLength, HeuristicLength
from engine.drafting.proposers.retrieval import Candidate, DocumentIndex, RetrievalProposer, choose_retrieved
from specviz import cli
from specviz.runner import MAX_DOCUMENT_BYTES, RunRequest, Runner, read_document_file
from specviz.store import SCHEMA_VERSION, RunStore
from test_engine_tiny import _next_probs, exact_first_two, lookup_friendly_prompt, residual_bug_noncentrality

pytestmark = pytest.mark.usefixtures("single_thread")

NASTY_DOCUMENT = "t1 t2 t3 <img src=x onerror=alert(1)> \u00e9\u4e2d\U0001f600 'quotes' \"double\""


class TextTokenizer(FakeTokenizer):
    """The tests' fake tokenizer, able to encode its own text too: "t3 t5" -> [3, 5] (other words are skipped)."""

    def __call__(self, text: str, add_special_tokens: bool = True, verbose: bool = True) -> dict:
        words = [w for w in text.split() if w.startswith(self.prefix) and w[len(self.prefix):].isdigit()]
        return {"input_ids": [int(w[len(self.prefix):]) % self.vocab_size for w in words]}


def text_of(ids: list[int]) -> str:
    return " ".join(f"t{i}" for i in ids)


@pytest.fixture(scope="module")
def target(tiny_target) -> LoadedModel:
    """The tiny target with a tokenizer that can encode prompts and documents."""
    return LoadedModel("tiny-target", tiny_target.model, TextTokenizer(TINY_VOCAB))


@pytest.fixture(scope="module")
def models(tiny_noisy_drafter, target) -> ModelCache:
    by_spec = {"tiny-target": target, "tiny-noisy": tiny_noisy_drafter}
    return ModelCache(max_models=4, loader=lambda spec, progress=None: by_spec[spec])


PROMPT = [3, 5, 7, 11, 2, 9]


@pytest.fixture(scope="module")
def ar_tokens(target):
    return run_to_completion(SpeculativeDecoder(target), PROMPT, 40).token_ids


# --------------------------------------------------------------------------- retrieval on token lists

DOC = [7, 1, 2, 3, 9, 1, 2, 4, 5, 8, 1, 2, 4, 5, 6, 1, 2]


@pytest.mark.parametrize(
    "context, k, min_match, max_match, max_candidates, expected",
    [
        # "1 2" occurs 4 times; "9 1 2" (match 3) ranks first; "4 5 ..." twice: the earlier occurrence counts, once
        ([9, 1, 2], 2, 2, 8, 8, [((4, 5), 3, 7), ((3, 9), 2, 3)]),
        ([9, 1, 2], 3, 2, 8, 8, [((4, 5, 8), 3, 7), ((3, 9, 1), 2, 3), ((4, 5, 6), 2, 12)]),
        # max_match 2 stops the backwards extension: every match has length 2, earliest first
        ([9, 1, 2], 3, 2, 2, 8, [((3, 9, 1), 2, 3), ((4, 5, 8), 2, 7), ((4, 5, 6), 2, 12)]),
        ([9, 1, 2], 3, 2, 8, 1, [((4, 5, 8), 3, 7)]),  # max_candidates
        ([8, 1, 2], 3, 2, 8, 8, [((4, 5, 6), 3, 12), ((3, 9, 1), 2, 3), ((4, 5, 8), 2, 7)]),  # longest, not earliest
        ([5, 6, 1, 2], 3, 2, 8, 8, [((3, 9, 1), 2, 3), ((4, 5, 8), 2, 7), ((4, 5, 6), 2, 12)]),
        ([0, 6, 1], 4, 2, 8, 8, [((2,), 2, 16)]),  # the continuation is cut by the end of the document
        ([1, 2, 4, 5], 2, 2, 8, 8, [((8, 1), 4, 9), ((6, 1), 4, 14)]),
        ([1, 2], 2, 3, 8, 8, []),  # the context is shorter than min_match
        ([3, 3], 2, 2, 8, 8, []),  # no occurrence
        ([5, 6, 1, 2], 2, 4, 8, 8, []),  # "5 6 1 2" ends the document: nothing follows it
        ([2], 3, 1, 8, 8, [((3, 9, 1), 1, 3), ((4, 5, 8), 1, 7), ((4, 5, 6), 1, 12)]),
    ],
)
def test_retrieve_ranks_longest_match_first(context, k, min_match, max_match, max_candidates, expected):
    index = DocumentIndex(DOC, min_match)
    found = index.retrieve(context, k, max_match, max_candidates)
    assert [(c.tokens, c.match_length, c.position) for c in found] == expected


def test_retrieve_continuation_stops_at_the_end_of_the_document():
    index = DocumentIndex([1, 2, 3, 1, 2], min_match=2)
    assert [(c.tokens, c.position) for c in index.retrieve([1, 2], k=5, max_match=4, max_candidates=4)] == [((3, 1, 2), 2)]


def test_identical_continuations_count_once_on_a_large_repetitive_document():
    index = DocumentIndex([1, 2] * 50_000 + [3, 4, 5], min_match=2)
    found = index.retrieve([2, 1, 2], k=4, max_match=8, max_candidates=8)  # 50k occurrences, 3 distinct continuations
    assert [(c.tokens, c.match_length, c.position) for c in found] == [
        ((1, 2, 1, 2), 3, 4), ((1, 2, 3, 4), 3, 99_998), ((3, 4, 5), 3, 100_000)]


# --------------------------------------------------------------------------- pruning and choosing


def dist(**probs: float) -> torch.Tensor:
    """A distribution over 10 tokens from t<i>=p keywords; the rest of the mass spread over the other tokens."""
    out = torch.zeros(10)
    free = torch.ones(10, dtype=torch.bool)
    for name, p in probs.items():
        out[int(name[1:])] = p
        free[int(name[1:])] = False
    out[free] = (1.0 - float(out.sum())) / int(free.sum())
    return out


CANDS = [Candidate((5, 6), 3, 10), Candidate((7, 1), 2, 20), Candidate((5, 2), 2, 30), Candidate((8,), 1, 40)]


@pytest.mark.parametrize(
    "alive, position, draft_dist, tau, token, candidate, alive_after, fates",
    [
        # t5 (p .6, candidates 0 and 2) beats t7 (p .3); t8 is pruned
        ([0, 1, 2, 3], 0, dist(t5=0.6, t7=0.3, t8=0.01), 0.05, 5, 0, [0, 2], {1: "dropped at position 0", 3: "pruned at position 0"}),
        # the drafter prefers t7: retrieval rank does not matter, the drafter's probability does
        ([0, 1, 2, 3], 0, dist(t5=0.2, t7=0.7, t8=0.05), 0.05, 7, 1, [1], {0: "dropped", 2: "dropped", 3: "dropped"}),
        # a tie goes to the better-ranked candidate
        ([1, 3], 0, dist(t7=0.4, t8=0.4), 0.1, 7, 1, [1], {3: "dropped"}),
        # tau 0 never prunes, even a zero-probability token
        ([3], 0, dist(t8=0.0, t1=0.5), 0.0, 8, 3, [3], {}),
        # position 1: candidate 3 is used up; 0 and 2 disagree; t6 is pruned at the threshold's edge
        ([0, 2, 3], 1, dist(t6=0.099, t2=0.1), 0.1, 2, 2, [2], {0: "pruned at position 1", 3: "used up after 1 tokens"}),
        # nothing survives: the drafter takes over
        ([0, 1], 0, dist(t5=0.01, t7=0.02), 0.05, None, None, [], {0: "pruned", 1: "pruned"}),
    ],
)
def test_choose_prunes_below_tau_and_follows_the_drafters_favourite(alive, position, draft_dist, tau, token, candidate,
                                                                    alive_after, fates):
    choice = choose_retrieved(CANDS, alive, position, draft_dist, tau, lambda t: f"t{t}")
    assert (choice.token, choice.candidate, choice.alive) == (token, candidate, alive_after)
    assert set(choice.fates) == set(fates)
    for c, reason in fates.items():
        assert choice.fates[c].startswith(reason)
    for c, reason in choice.fates.items():
        if reason.startswith("pruned"):
            assert f"< tau {tau}" in reason and "drafter p('t" in reason


# --------------------------------------------------------------------------- the proposer on tiny models


class CheckedRetrievalProposer(RetrievalProposer):
    """After every proposal, compares the drafter's probabilities it reports (and its own tokens)
    with fresh, cache-free forward passes over context + draft prefix."""

    proposals = 0

    def propose(self, context, k, sampling, generator):
        proposal = super().propose(context, k, sampling, generator)
        positions = proposal.info["tables"][1]["rows"]
        assert len(positions) == len(proposal.token_ids) <= k
        for j, (token, row) in enumerate(zip(proposal.token_ids, positions)):
            fresh = _next_probs(self.model, context + proposal.token_ids[:j], sampling)
            assert row[3] == pytest.approx(float(fresh[token]), abs=1e-4), "the drafter's cache is out of step"
            if row[2] == self.drafter_name and sampling.greedy:
                assert token == int(fresh.argmax())
            if row[2] == self.drafter_name:
                torch.testing.assert_close(proposal.draft_probs[j], fresh, atol=1e-4, rtol=0)
            else:  # a retrieved token: one-hot row
                assert float(proposal.draft_probs[j, token]) == 1.0 and float(proposal.draft_probs[j].sum()) == 1.0
        info = proposal.info
        assert info["from_document"] + info["from_drafter"] == len(proposal.token_ids)
        self.proposals += 1
        return proposal


def proposer(model, document: list[int], *, tau=0.05, drafter_tokens=2, min_match=2, max_candidates=4, checked=True,
             stop_below=0.0):
    cls = CheckedRetrievalProposer if checked else RetrievalProposer
    return cls(model, document, TextTokenizer(TINY_VOCAB).decode, tau, max_candidates, min_match, 8, drafter_tokens,
               "tiny-drafter", stop_below=stop_below)


def noisy_document(tokens: list[int], every: int, seed: int = 0) -> list[int]:
    """The tokens with every `every`-th one replaced: retrieval is then right, then wrong."""
    generator = torch.Generator().manual_seed(seed)
    out = list(tokens)
    for i in range(every - 1, len(out), every):
        out[i] = int(torch.randint(TINY_VOCAB, (1,), generator=generator))
    return out


@pytest.mark.parametrize(
    "drafter_key, tau, drafter_tokens, every, policy, stop_below",
    [
        ("noisy", 0.05, 2, 5, lambda: ConstantLength(4), 0.0),
        ("noisy", 0.3, 2, 7, lambda: ConstantLength(5), 0.0),  # strict pruning: the drafter does more of the work
        ("noisy", 0.0, 0, 4, lambda: HeuristicLength(2, 8), 0.0),  # retrieval only, no pruning
        ("target", 0.05, 3, 6, lambda: ConstantLength(4), 0.0),  # the target as its own drafter
        ("early_exit_1", 0.0, 1, 5, lambda: HeuristicLength(3, 6), 0.0),
        ("noisy", 0.0, 4, 5, lambda: ConstantLength(6), 0.3),  # the drafter stops where it is unsure
    ],
)
def test_greedy_equals_autoregressive_and_the_drafter_cache_follows(drafter_key, tau, drafter_tokens, every, policy,
                                                                     stop_below, target, tiny_noisy_drafter, ar_tokens):
    drafter = {"noisy": tiny_noisy_drafter, "target": target, "early_exit_1": early_exit_drafter(target, 1)}[drafter_key]
    document = [13, 4] + noisy_document(PROMPT[-3:] + ar_tokens[:30], every) + [0, 15]
    rasd = proposer(drafter.model, document, tau=tau, drafter_tokens=drafter_tokens, stop_below=stop_below)
    result = run_to_completion(SpeculativeDecoder(target, rasd, policy(), SamplingConfig()), PROMPT, 40)
    assert result.token_ids == ar_tokens
    assert rasd.proposals > 0
    drafted = {"document": 0, "drafter": 0}
    accepted = {"document": 0, "drafter": 0}
    for event in result.events:
        n_doc = event.proposer_info.get("from_document", 0)  # the last step may draft nothing (token budget)
        for t in event.draft:
            source = "document" if t.position < n_doc else "drafter"
            drafted[source] += 1
            accepted[source] += t.verdict == "accepted"
    assert drafted["document"] > accepted["document"] > 0, (drafted, accepted)  # retrieval right and wrong
    if drafter_tokens:
        assert drafted["drafter"] > 0
    else:
        assert drafted["drafter"] == 0
    stops = [e.proposer_info["summary"] for e in result.events if "the drafter stopped" in e.proposer_info.get("summary", "")]
    assert bool(stops) == (stop_below > 0), stops


def test_retrieval_only_leaves_the_drafter_idle_without_a_match(target, tiny_noisy_drafter):
    rasd = proposer(tiny_noisy_drafter.model, [14, 15, 14], drafter_tokens=0, checked=False)
    events = list(SpeculativeDecoder(target, rasd, ConstantLength(4), SamplingConfig()).generate(PROMPT, 6))
    assert all(e.num_drafted == 0 and e.output.kind == "baseline" for e in events)
    assert rasd.lm.forward_passes == 0
    assert events[0].proposer_info["retrieved"] == 0
    assert "no match in the document" in events[0].proposer_info["summary"]


def test_proposer_info_names_candidates_their_fate_and_sources(target):
    prompt = [1, 2, 3, 4]
    greedy = run_to_completion(SpeculativeDecoder(target), prompt, 3).token_ids
    wrong = (greedy[0] + 1) % TINY_VOCAB
    # two candidates after "3 4": the target's own continuation, and one starting with another token
    document = [3, 4, *greedy, 9, 3, 4, wrong, 9]
    rasd = proposer(target.model, document, tau=0.0, drafter_tokens=1, checked=False)
    rasd.start(prompt)
    proposal = rasd.propose(prompt, 4, SamplingConfig(), torch.Generator())
    info = proposal.info
    candidates, positions = info["tables"]
    assert candidates["columns"][:5] == ["#", "match length", "document token", "matched text", "continuation"]
    rows = {row[0]: row for row in candidates["rows"]}
    assert rows[1][4] == TextTokenizer(TINY_VOCAB).decode(greedy + [9])  # the continuation's text
    assert rows[1][3] == "t3 t4 " and rows[1][1] == 2 and rows[1][2] == 2
    assert rows[2][-1].startswith("dropped at position 0")
    assert proposal.token_ids[:3] == greedy
    assert info["from_document"] == 4 and info["from_drafter"] == 0  # 3 tokens + the document's "9"
    assert [row[2] for row in positions["rows"]] == ["document (candidate #1)"] * 4
    assert info["summary"].startswith("2 candidates retrieved (longest match 2 tokens, at document token 2)")


# --------------------------------------------------------------------------- the public wiring


def test_build_decoder_needs_a_document_for_rasd_only(target, models):
    for document in (None, "", "  \n"):
        with pytest.raises(ConfigError) as info:
            build_decoder(parse_strategy("rasd", {"drafter": "tiny-noisy"}), target, models, SamplingConfig(), document=document)
        assert info.value.field == "document" and "attach one" in str(info.value)
    ar = build_decoder(parse_strategy("prompt_lookup"), target, models, SamplingConfig(), document="t1 t2")
    assert ar.proposer is not None  # other strategies ignore the document


@pytest.mark.parametrize("params", [{"drafter": "tiny-noisy"}, {"drafter": "early-exit:2", "tau": "0", "k": "6"},
                                    {"drafter": "tiny-noisy", "drafter_tokens": "0", "length_policy": "heuristic"},
                                    {"drafter": "tiny-noisy", "drafter_tokens": "3", "stop_below": "0.5"}])
def test_build_decoder_wires_rasd_losslessly(params, target, models, ar_tokens):
    document = text_of(noisy_document(ar_tokens[:25], 6))
    # the tiny models have no token-frequency table: VocabTrim off
    decoder = build_decoder(parse_strategy("rasd", {**params, "vocab_trim": "0"}), target, models, SamplingConfig(), document=document)
    result = run_to_completion(decoder, PROMPT, 40)
    assert result.token_ids == ar_tokens
    assert sum(e.proposer_info.get("from_document", 0) for e in result.events) > 0


@pytest.mark.parametrize(
    "params, field",
    [({"tau": "1.5"}, "tau"), ({"tau": "-0.1"}, "tau"), ({"tau": "high"}, "tau"), ({"min_match": "0"}, "min_match"),
     ({"min_match": "5", "max_match": "3"}, "min_match"), ({"max_candidates": "0"}, "max_candidates"),
     ({"drafter_tokens": "-1"}, "drafter_tokens"), ({"stop_below": "1.2"}, "stop_below"),
     ({"vocab_trim": "-3"}, "vocab_trim"), ({"drafter": "early-exit:x"}, "drafter"), ({"drafter": " "}, "drafter")],
)
def test_rasd_config_is_validated(params, field):
    with pytest.raises(ConfigError) as info:
        parse_strategy("rasd", params)
    assert info.value.field == field


# --------------------------------------------------------------------------- sampling: statistical losslessness

N_RUNS = 1000
ALPHA = 1e-3  # a correct engine fails a given (fixed-seed) case with probability 1e-3


@pytest.mark.parametrize(
    "path, settings",
    [
        ("retrieved,retrieved", dict(temperature=1.0)),
        pytest.param("retrieved,drafter", dict(temperature=1.0), marks=pytest.mark.exhaustive),
        ("retrieved,drafter", dict(temperature=0.7, top_k=8, top_p=0.9)),
        ("pruned", dict(temperature=1.0)),
        ("retrieved,stopped", dict(temperature=1.0)),  # the drafter is never sure enough (stop_below = 1)
    ],
)
def test_sampling_first_two_tokens_follow_the_target(path, settings, target, tiny_noisy_drafter):
    """N_RUNS seeded runs with K = 2: the first step drafts [c, a] from the document (one-hot rows),
    or c from the document then the drafter's token, or (tau = 1, everything pruned) two drafter
    tokens. The first two output tokens' joint must pass a chi-square test (alpha = 1e-3, cells
    under 5 expected pooled) against the target's exact joint p(x1) p(x2 | x1)."""
    reference = SamplingConfig(**settings)
    prompt = lookup_friendly_prompt(target.model, reference)  # [a, b, c, a, b]: p(c) in (0.3, 0.7)
    a, b, c = prompt[:3]
    other = next(t for t in range(TINY_VOCAB) if t not in (a, b, c))
    document = {
        # two candidates after "a b", [c, a] and [c, other]: the drafter's favourite second token wins
        "retrieved,retrieved": [a, b, c, a, a, b, c, other],
        "retrieved,drafter": [other, a, b, c],  # the continuation [c] ends the document
        "pruned": [a, b, c, a],
        "retrieved,stopped": [other, a, b, c],
    }[path]
    tau = 1.0 if path == "pruned" else 0.01
    expected = exact_first_two(target.model, prompt, reference)
    stop_below = 1.0 if path == "retrieved,stopped" else 0.0
    rasd = proposer(tiny_noisy_drafter.model, document, tau=tau, drafter_tokens=2, checked=False, stop_below=stop_below)
    counts: dict[tuple[int, int], int] = {}
    verdicts = {"accepted": 0, "rejected": 0}
    first_sources = set()
    for seed in range(N_RUNS):
        decoder = SpeculativeDecoder(target, rasd, ConstantLength(2), SamplingConfig(**settings, seed=seed))
        tokens: list[int] = []
        for event in decoder.generate(prompt, 3):
            if event.index == 0:
                assert event.num_drafted == (1 if stop_below else 2)
                first_sources.add((event.proposer_info["from_document"], tuple(t.token_id for t in event.draft[:1])))
                for drafted in event.draft:
                    if drafted.verdict in verdicts:
                        verdicts[drafted.verdict] += 1
            tokens.extend(t.token_id for t in event.new_tokens)
            if len(tokens) >= 2:
                break
        counts[(tokens[0], tokens[1])] = counts.get((tokens[0], tokens[1]), 0) + 1

    from_document = {"retrieved,retrieved": 2, "retrieved,drafter": 1, "pruned": 0, "retrieved,stopped": 1}[path]
    assert {n for n, _ in first_sources} == {from_document}, first_sources
    assert verdicts["accepted"] > 0.05 * N_RUNS and verdicts["rejected"] > 0.05 * N_RUNS, verdicts
    assert set(counts) <= set(expected)
    stat, df = chi_square_statistic(counts, expected, N_RUNS)
    critical = chi_square_critical(df, ALPHA)
    assert stat < critical, f"chi-square {stat:.1f} >= {critical:.1f} (df {df}): output distribution differs from the target's"
    # power: a verifier that resampled from p instead of the residual would be caught
    p = _next_probs(target.model, prompt, reference)
    if from_document:
        ((_, (first,)),) = first_sources
        noncentrality = residual_bug_noncentrality(p, None, first, N_RUNS)
    else:
        noncentrality = residual_bug_noncentrality(p, _next_probs(tiny_noisy_drafter.model, prompt, reference), None, N_RUNS)
    assert df + noncentrality > critical + 10, noncentrality


# --------------------------------------------------------------------------- the document reaches the run


def test_document_round_trips_through_the_store_and_old_logs_gain_the_column(tmp_path):
    path = tmp_path / "old.db"
    RunStore(path).close()
    conn = sqlite3.connect(path)  # make it a version-2 log: runs without a document column
    conn.execute("ALTER TABLE runs DROP COLUMN document")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    store = RunStore(path)
    assert "document" in store.db["runs"].columns_dict
    assert store.db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    run_id = store.start_run(
        strategy=parse_strategy("rasd"), sampling=SamplingConfig(), target="t", drafter="early-exit:6",
        prompt="p", prompt_tokens=1, max_new_tokens=4, document=NASTY_DOCUMENT,
    )
    assert store.get_run(run_id)["document"] == NASTY_DOCUMENT
    without = store.start_run(strategy=parse_strategy("ar"), sampling=SamplingConfig(), target="t", drafter=None,
                              prompt="p", prompt_tokens=1, max_new_tokens=4)
    assert store.get_run(without)["document"] is None


def test_runner_logs_the_document_and_the_retrieval_steps(tmp_path, models, ar_tokens):
    store = RunStore(tmp_path / "runs.db")
    runner = Runner(models, store)
    document = text_of(ar_tokens[:20]) + " " + NASTY_DOCUMENT
    request = RunRequest(prompt=text_of(PROMPT), strategy=parse_strategy("rasd", {"drafter": "tiny-noisy", "vocab_trim": "0"}),
                         max_new_tokens=12, target="tiny-target", raw=True, document=document)
    updates = list(runner.stream(runner.prepare(request)))
    run = store.get_run(updates[-1].run_id)
    assert run["document"] == document and run["status"] == "finished"
    logged = store.load_events(run["id"])
    assert [e.proposer_info for e in logged] == [e.proposer_info for e in updates[-1].events]
    assert sum(e.proposer_info.get("from_document", 0) for e in logged) > 0


def test_runner_refuses_a_document_over_the_limit(models):
    request = RunRequest(prompt="t1", strategy=parse_strategy("rasd", {"drafter": "tiny-noisy", "vocab_trim": "0"}), target="tiny-target",
                         raw=True, document="x" * (MAX_DOCUMENT_BYTES + 1))
    with pytest.raises(ConfigError, match="the limit is 1 MB"):
        Runner(models).prepare(request)


def test_read_document_file_accepts_utf8_text_only(tmp_path):
    good = tmp_path / "notes.txt"
    good.write_text(NASTY_DOCUMENT, encoding="utf-8")
    assert read_document_file(good) == NASTY_DOCUMENT
    cases = {
        "image.png": (b"\x89PNG\r\n\x1a\n\xff\xfe", "is not a UTF-8 text file"),
        "nul.bin": (b"abc\x00def", "looks like a binary file"),
        "big.txt": (b"a" * (MAX_DOCUMENT_BYTES + 1), "big.txt is 1.0 MB; the limit is 1 MB"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ConfigError, match=message):
            read_document_file(tmp_path / name)
    with pytest.raises(ConfigError, match="cannot read"):
        read_document_file(tmp_path / "missing.txt")


@pytest.mark.parametrize("content, message", [(None, "No such file"), (b"\xff\xfe\x00binary", "not a UTF-8 text file")])
def test_cli_document_errors_exit_2_with_one_line(content, message, tmp_path, capsys):
    path = tmp_path / "doc.txt"
    if content is not None:
        path.write_bytes(content)
    code = cli.main(["run", "--prompt", "Hi", "--strategy", "rasd", "--document", str(path), "--db", str(tmp_path / "r.db")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("specviz: error: document: ") and message in err
    assert "Traceback" not in err


@pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")  # Gradio's queue
def test_explorer_passes_the_document_to_the_run(tmp_path, models, ar_tokens):
    """The /run API's `document` parameter reaches the engine and the log; the inspector shows the
    retrieved candidates; History shows the document; a bad upload gets a clear message."""
    gradio_client = pytest.importorskip("gradio_client")
    from specviz.ui import build_app, launch_local
    from specviz.ui.controls import load_document_file
    from specviz.ui.render import step_inspector_html

    store = RunStore(tmp_path / "ui.db")
    demo = build_app(models, store)
    try:
        client = gradio_client.Client(launch_local(demo), verbose=False)
        document = text_of(ar_tokens[:20]) + " " + NASTY_DOCUMENT
        result = client.predict(prompt=text_of(PROMPT), strategy="rasd", drafter="tiny-noisy", vocab_trim=0, max_new_tokens=10,
                                target="tiny-target", raw=True, document=document, api_name="/run")
        status = html.unescape(next(x for x in result if isinstance(x, str) and 'class="status' in x))
        assert "Finished run #" in status, status
        (run,) = store.list_runs()
        assert run["strategy"] == "rasd" and run["document"] == document
        events = store.load_events(run["id"])
        step = next(i for i, e in enumerate(events) if e.proposer_info.get("from_document"))
        inspector = step_inspector_html(events, step)
        assert "Retrieved candidates" in inspector and "Draft positions" in inspector
        opened = client.predict(run_id=run["id"], api_name="/open_run")
        assert {"visible": True, "value": document, "__type__": "update"} in opened  # History's document box
        missing = client.predict(prompt=text_of(PROMPT), strategy="rasd", drafter="tiny-noisy", vocab_trim=0, max_new_tokens=4,
                                 target="tiny-target", raw=True, api_name="/run")
        assert "document: rasd drafts from a document" in html.unescape(
            next(x for x in missing if isinstance(x, str) and 'class="status' in x))
        assert len(store.list_runs()) == 1
    finally:
        demo.close()
    binary = tmp_path / "upload.bin"
    binary.write_bytes(b"\x00\x01\x02")
    with pytest.warns(UserWarning, match="upload.bin looks like a binary file"):  # the toast, outside a request
        text, status = load_document_file(str(binary))
    assert "upload.bin looks like a binary file" in html.unescape(status) and "status-error" in status
    good = tmp_path / "upload.txt"
    good.write_text(NASTY_DOCUMENT, encoding="utf-8")
    text, status = load_document_file(str(good))
    assert text == NASTY_DOCUMENT and "Loaded the document upload.txt" in status


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_greedy_equals_baseline_on_a_rag_prompt_with_its_passage(real_model, model_cache):
    from specviz.bench import prompt_passage

    prompt = next(p for p in load_prompts() if p["category"] == "rag")
    ids = encode_prompt(real_model.tokenizer, prompt["prompt"])
    baseline = run_to_completion(build_decoder(parse_strategy("ar"), real_model, model_cache, SamplingConfig()), ids, 48)
    strategy = parse_strategy("rasd", {"tau": "0", "drafter_tokens": "1"})
    decoder = build_decoder(strategy, real_model, model_cache, SamplingConfig(), document=prompt_passage(prompt["prompt"]))
    result = run_to_completion(decoder, ids, 48)
    assert result.token_ids == baseline.token_ids
    retrieved = [t for e in result.events for t in e.draft[: e.proposer_info.get("from_document", 0)]]
    assert sum(t.verdict == "accepted" for t in retrieved) >= 10
    assert any(t.verdict == "rejected" for t in retrieved)
