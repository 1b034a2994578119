"""Strategy configs (parsing, validation, the registry) and draft-length policies."""

from __future__ import annotations

import dataclasses

import pytest

from engine import STRATEGIES, describe_strategies, parse_strategy
from engine.errors import ConfigError
from engine.events import StepFeedback
from engine.drafting.policies import ConstantLength, HeuristicLength
from engine.strategies import AutoregressiveConfig, DraftModelConfig, EarlyExitConfig, PromptLookupConfig


def test_registry_holds_every_strategy():
    assert set(STRATEGIES) >= {"ar", "draft_model", "early_exit", "prompt_lookup"}
    for name, cls in STRATEGIES.items():
        assert cls.name == name


def test_parse_strategy_defaults():
    assert parse_strategy("ar") == AutoregressiveConfig()
    assert parse_strategy("draft_model") == DraftModelConfig()
    assert parse_strategy("early_exit", None) == EarlyExitConfig()
    assert parse_strategy("prompt_lookup", {}) == PromptLookupConfig()


def test_parse_strategy_coerces_strings():
    config = parse_strategy("prompt_lookup", {"k": " 6 ", "max_ngram": "4", "min_ngram": "2", "length_policy": "heuristic"})
    assert config == PromptLookupConfig(k=6, max_ngram=4, min_ngram=2, length_policy="heuristic")
    assert isinstance(config.k, int)
    assert parse_strategy("draft_model", {"drafter": " early-exit:3 "}).drafter == "early-exit:3"
    assert parse_strategy("early_exit", {"exit_layer": 10, "k": "2"}) == EarlyExitConfig(exit_layer=10, k=2)


@pytest.mark.parametrize(
    "name, params, field",
    [
        ("beam_search", {}, "strategy"),
        ("", {}, "strategy"),
        ("ar", {"k": "4"}, "k"),  # ar has no parameters at all
        ("prompt_lookup", {"drafter": "x"}, "drafter"),
        ("draft_model", {"temperature": "1"}, "temperature"),
        ("draft_model", {"k": "0"}, "k"),
        ("draft_model", {"k": -2}, "k"),
        ("early_exit", {"k": "20", "max_k": "8"}, "k"),  # k > max_k
        ("prompt_lookup", {"k": 13}, "k"),  # default max_k is 12
        ("draft_model", {"max_k": "0"}, "max_k"),
        ("draft_model", {"length_policy": "adaptive"}, "length_policy"),
        ("prompt_lookup", {"length_policy": ""}, "length_policy"),
        ("draft_model", {"k": "four"}, "k"),
        ("draft_model", {"k": "4.5"}, "k"),
        ("prompt_lookup", {"max_ngram": "3x"}, "max_ngram"),
        ("early_exit", {"exit_layer": "six"}, "exit_layer"),
        ("early_exit", {"exit_layer": "0"}, "exit_layer"),
        ("prompt_lookup", {"min_ngram": "4", "max_ngram": "2"}, "min_ngram"),
        ("prompt_lookup", {"min_ngram": "0"}, "min_ngram"),
        ("draft_model", {"drafter": "   "}, "drafter"),
        ("draft_model", {"drafter": "early-exit:0"}, "drafter"),
        ("draft_model", {"drafter": "early-exit:abc"}, "drafter"),
        ("draft_model", {"k": True}, "k"),  # booleans are not integers here
    ],
)
def test_parse_strategy_rejects_with_the_field_named(name, params, field):
    with pytest.raises(ConfigError) as info:
        parse_strategy(name, params)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")


def test_unknown_parameter_message_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        parse_strategy("prompt_lookup", {"ngram": 3})
    message = str(info.value)
    for known in ("k", "length_policy", "max_k", "max_ngram", "min_ngram"):
        assert known in message


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError) as info:
        DraftModelConfig(k=0)
    assert info.value.field == "k"
    with pytest.raises(ConfigError) as info:
        PromptLookupConfig(max_ngram=17)
    assert info.value.field == "max_ngram"


@pytest.mark.parametrize("config", [AutoregressiveConfig(), DraftModelConfig(), EarlyExitConfig(), PromptLookupConfig()])
def test_configs_are_frozen(config):
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.k = 3  # type: ignore[misc]
    assert hash(config) == hash(dataclasses.replace(config))


def test_describe_strategies_lists_everything():
    described = describe_strategies()
    assert [d["name"] for d in described] == list(STRATEGIES)
    for entry in described:
        cls = STRATEGIES[entry["name"]]
        assert set(entry) >= {"name", "lossless", "parameters", "description"}
        assert entry["lossless"] is cls.lossless
        assert isinstance(entry["description"], str) and entry["description"].strip()
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(entry["parameters"]) == set(fields)
        defaults = cls()
        for pname, spec in entry["parameters"].items():
            assert spec["default"] == getattr(defaults, pname)
            assert spec["type"] in ("int", "str", "float")
            assert isinstance(spec["help"], str) and spec["help"].strip()  # the explorer shows it under the field
            if "choices" in spec:
                assert spec["default"] in spec["choices"]
    by_name = {d["name"]: d for d in described}
    assert by_name["ar"]["parameters"] == {}
    assert {k: v for k, v in by_name["prompt_lookup"]["parameters"]["k"].items() if k != "help"} == {
        "default": 4, "type": "int", "min": 1, "max": 64}
    assert {k: v for k, v in by_name["rasd"]["parameters"]["tau"].items() if k != "help"} == {
        "default": 0.0, "type": "float", "min": 0.0, "max": 1.0}
    assert "min" not in by_name["draft_model"]["parameters"]["drafter"]  # a string: no range
    assert by_name["draft_model"]["parameters"]["length_policy"]["choices"] == ["constant", "heuristic", "feedback", "confidence", "specdec"]
    assert by_name["prompt_lookup"]["parameters"]["min_ngram"]["default"] == 2
    assert by_name["draft_model"]["parameters"]["drafter"]["default"] == "distilled"
    assert by_name["draft_model"]["parameters"]["vocab_trim"]["default"] == 0
    assert by_name["early_exit"]["parameters"]["exit_layer"]["default"] == 6
    assert all(d["lossless"] for d in described)  # every strategy so far is lossless


# --------------------------------------------------------------------------- declared ranges and choices


def _declared(kind):
    """(strategy, parameter, spec) for every parameter of that kind ("range" or "choices"), from describe_strategies."""
    return [(s["name"], p, spec) for s in describe_strategies() for p, spec in s["parameters"].items()
            if (kind == "range" and spec["type"] in ("int", "float")) or (kind == "choices" and "choices" in spec)]


def _consistent(name, pname, value):
    """Other fields set so that only `pname`'s own range decides: an ORDERED partner at its far end."""
    cls, params = STRATEGIES[name], {pname: value}
    specs = {p: spec for s in describe_strategies() if s["name"] == name for p, spec in s["parameters"].items()}
    for first, second in cls.ORDERED:
        if pname == first:
            params[second] = specs[second]["max"]
        elif pname == second:
            params[first] = specs[first]["min"]
    return params


RANGES = _declared("range")


def test_every_number_parameter_declares_its_range():
    assert len(RANGES) > 50
    for name, pname, spec in RANGES:
        assert {"min", "max"} <= set(spec), f"{name}.{pname} has no declared range"
        assert spec["min"] <= spec["default"] <= spec["max"], f"{name}.{pname}"


@pytest.mark.parametrize("name, pname, spec", RANGES, ids=[f"{n}.{p}" for n, p, _ in RANGES])
def test_ranges_are_inclusive_and_enforced(name, pname, spec):
    low, high = spec["min"], spec["max"]
    for value in (low, high):
        assert getattr(STRATEGIES[name](**_consistent(name, pname, value)), pname) == value
    if spec["type"] == "float":  # ints are fine where a float is asked for
        STRATEGIES[name](**_consistent(name, pname, int(low)))
    word = "an integer" if spec["type"] == "int" else "a number"
    for value in (low - 1, high + 1, True, "1"):  # bool is not a number here; strings are parsed by parse_strategy only
        with pytest.raises(ConfigError) as info:
            STRATEGIES[name](**_consistent(name, pname, value))
        assert info.value.field == pname
        assert str(info.value).startswith(f"{pname}: must be {word} in [")


CHOICES = _declared("choices")


@pytest.mark.parametrize("name, pname, spec", CHOICES, ids=[f"{n}.{p}" for n, p, _ in CHOICES])
def test_choice_parameters_reject_unknown_values(name, pname, spec):
    for choice in spec["choices"]:
        assert getattr(parse_strategy(name, {pname: choice}), pname) == choice
    with pytest.raises(ConfigError) as info:
        parse_strategy(name, {pname: "no-such-choice"})
    assert str(info.value) == f"{pname}: must be one of {', '.join(spec['choices'])}, got 'no-such-choice'"


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("prompt_lookup", {"k": 13}, "k: must be <= max_k (12), got 13"),
        ("diffusion", {"k": 9}, "k: must be <= max_k (8), got 9"),
        ("aded", {"min_ngram": 4}, "min_ngram: must be <= max_ngram (3), got 4"),
        ("lookup_tree", {"min_ngram": 4}, "min_ngram: must be <= max_ngram (3), got 4"),
        ("rasd", {"min_match": 9, "max_match": 8}, "min_match: must be <= max_match (8), got 9"),
        ("rasd_tree", {"min_match": 9, "max_match": 8}, "min_match: must be <= max_match (8), got 9"),
        ("kangaroo", {"max_k": 5}, "k: must be <= max_k (5), got 6"),  # kangaroo's own default k is 6
        ("draft_model", {"k": 0}, "k: must be an integer in [1, 64], got 0"),
        ("kangaroo", {"stop_below": 2}, "stop_below: must be a number in [0, 1], got 2"),
        ("aded", {"exploration": 101.0}, "exploration: must be a number in [0, 100], got 101.0"),
        ("pearl", {"vocab_trim": -1}, "vocab_trim: must be an integer in [0, 10000000], got -1"),
        ("static_tree", {"drafter": "early-exit:0"},
         "drafter: early-exit needs a positive layer count, e.g. early-exit:6, got 'early-exit:0'"),
        ("diffusion", {"drafter": ""}, "drafter: must name a model (hub id or folder) or early-exit:N"),
        ("cross_vocab", {"drafter": ""}, "drafter: must name a model (hub id, folder or gemma3-270m)"),
        ("del", {"exit_layers": "2,,4"}, "exit_layers: must be 'all' or comma-separated layer numbers, got '2,,4'"),
        ("rsd", {"branching": "8,8,8"}, "branching: makes a tree of 584 nodes; at most 128 are verified in one pass"),
    ],
)
def test_ordered_pairs_and_checks_keep_their_messages(name, params, message):
    with pytest.raises(ConfigError) as info:
        STRATEGIES[name](**params)
    assert str(info.value) == message

def test_labels_and_params():
    assert AutoregressiveConfig().label() == "ar"
    assert PromptLookupConfig(k=5).label() == "prompt_lookup(k=5, length_policy=constant, max_k=12, max_ngram=3, min_ngram=2)"
    assert EarlyExitConfig(exit_layer=4).drafter == "early-exit:4"
    assert DraftModelConfig().params()["drafter"] == "distilled"


# --------------------------------------------------------------------------- policies


def test_constant_policy():
    policy = ConstantLength(5)
    for drafted, accepted in [(5, 5), (5, 0), (0, 0)]:
        k, reason, inputs = policy.decide()
        assert k == 5 and "5" in reason and inputs == {"k": 5}
        policy.update(StepFeedback(drafted, accepted))


def test_heuristic_policy_schedule():
    policy = HeuristicLength(k=4, max_k=9)
    ks = []
    for drafted, accepted in [(4, 4), (6, 6), (8, 8), (9, 9), (9, 3), (8, 0), (7, 6), (6, 5), (5, 0), (4, 4)]:
        k, reason, inputs = policy.decide()
        assert k == drafted and inputs["k"] == k and inputs["max_k"] == 9
        ks.append(k)
        policy.update(StepFeedback(drafted, accepted))
    assert ks == [4, 6, 8, 9, 9, 8, 7, 6, 5, 4]
    assert policy.decide()[0] == 6  # +2 after the last full accept


def test_heuristic_policy_floor_cap_and_reasons():
    policy = HeuristicLength(k=2, max_k=3)
    assert policy.decide()[1] == "starting K = 2"
    policy.update(StepFeedback(2, 2))
    k, reason, inputs = policy.decide()
    assert k == 3 and "(cap)" in reason and inputs["previous_drafted"] == 2 and inputs["previous_accepted"] == 2
    policy.update(StepFeedback(3, 1))
    assert policy.decide()[0] == 2
    policy.update(StepFeedback(2, 0))
    assert policy.decide()[0] == 1
    policy.update(StepFeedback(1, 0))
    k, reason, _ = policy.decide()
    assert k == 1 and "(floor)" in reason
    policy.update(StepFeedback(0, 0))  # nothing drafted: no change, same reason
    assert policy.decide()[:2] == (1, reason)


def test_heuristic_partial_draft_fully_accepted_counts_as_full_accept():
    """A proposer may return fewer tokens than asked (n-gram); all of them accepted is +2."""
    policy = HeuristicLength(k=6, max_k=12)
    policy.update(StepFeedback(2, 2))
    assert policy.decide()[0] == 8
