"""The SQLite run log: schema, verbatim text, incremental writes, replay, concurrency."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from engine import SamplingConfig, parse_strategy
from engine.events import DraftedToken, LengthDecision, NewToken, OutputToken, PhaseTimings, StepEvent, TokenCandidate
from engine.metrics import RunMetrics
from specviz.store import SCHEMA_VERSION, RunStore

NASTY = "Robert'); DROP TABLE runs;-- <script>alert(\"x\")</script> \u00e9\u4e2d\U0001f600 \n\ttabs"


def make_event(index: int, accepted: int = 1, drafted: int = 3, stop: str | None = None) -> StepEvent:
    draft = tuple(
        DraftedToken(
            position=i, token_id=10 + i, text=f"<d{i}>'\"", draft_prob=0.5, target_prob=0.4 if i <= accepted else None,
            accept_prob=0.8 if i <= accepted else None, uniform=0.1 if i < accepted else (0.9 if i == accepted else None),
            verdict="accepted" if i < accepted else ("rejected" if i == accepted else "unchecked"),
            target_top=(TokenCandidate(7, "x", 0.6), TokenCandidate(8, NASTY, 0.2)) if i <= accepted else (),
        )
        for i in range(drafted)
    )
    new = tuple(NewToken(10 + i, f"<d{i}>'\"", "accepted") for i in range(accepted)) + (NewToken(99, NASTY, "recovered"),)
    return StepEvent(
        index=index, context_length=20 + index, decision=LengthDecision(3, drafted, "constant K = 3", {"k": 3}),
        draft=draft, output=OutputToken(99, NASTY, "recovered", 0.7, (TokenCandidate(99, NASTY, 0.7),)),
        new_tokens=new, target_forwards=1, timings=PhaseTimings(0.01, 0.02, 0.001, index * 0.1, index * 0.1 + 0.031),
        stop_reason=stop,
        proposer_info={"summary": NASTY, "exit_layer": 4, "tables": [{"title": "t", "columns": ["a"], "rows": [[NASTY]]}]}
        if index == 1 else {},
    )


def start(store: RunStore, prompt: str = NASTY) -> int:
    return store.start_run(
        strategy=parse_strategy("draft_model", {"k": "3"}), sampling=SamplingConfig(temperature=0.5, seed=3),
        target="smollm2-135m-instruct", drafter="early-exit:6", prompt=prompt, prompt_tokens=12, max_new_tokens=32,
    )


def test_schema_wal_foreign_keys_and_indexes(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    conn = sqlite3.connect(tmp_path / "runs.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "steps", "draft_tokens", "output_tokens"} <= tables
    for table in ("steps", "draft_tokens", "output_tokens"):
        fks = conn.execute(f"PRAGMA foreign_key_list({table})").fetchall()
        assert any(fk[2] == "runs" for fk in fks), table
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert any("created_at" in name for name in indexes)
    assert store.db.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_steps_rejected_for_unknown_run(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    with pytest.raises(sqlite3.IntegrityError):
        store.log_step(12345, make_event(0), first_seq=0)


def test_round_trip_is_verbatim_and_replayable(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    run_id = start(store)
    events = [make_event(0), make_event(1, accepted=3), make_event(2, accepted=0, stop="eos")]
    seq = 0
    for e in events:
        store.log_step(run_id, e, first_seq=seq)
        seq += len(e.new_tokens)
    metrics = RunMetrics.from_events(events)
    store.finish_run(run_id, status="finished", token_ids=[1, 2], text=NASTY, metrics=metrics, stop_reason="eos")
    run = store.get_run(run_id)
    assert run["prompt"] == NASTY and run["output_text"] == NASTY
    assert run["finished"] == 1 and run["status"] == "finished"
    assert run["mean_acceptance_length"] == pytest.approx(metrics.mean_acceptance_length)
    assert store.load_events(run_id) == events
    assert store.db["output_tokens"].count == seq


def test_unfinished_run_keeps_its_steps(tmp_path):
    path = tmp_path / "runs.db"
    store = RunStore(path)
    run_id = start(store)
    store.log_step(run_id, make_event(0), first_seq=0)
    store.log_step(run_id, make_event(1), first_seq=2)
    store.close()  # the store goes away without finish_run
    reopened = RunStore(path)
    run = reopened.get_run(run_id)
    # its owner (this process) is alive: it stays running (tests/test_crash_recovery.py kills real owners)
    assert run["finished"] == 0 and run["status"] == "running" and reopened.recovered == []
    assert len(reopened.load_events(run_id)) == 2


def test_list_runs_newest_first_and_filters(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    a = start(store, "first prompt")
    b = start(store, "second prompt")
    assert [r["id"] for r in store.list_runs()] == [b, a]
    assert [r["id"] for r in store.list_runs(search="first")] == [a]
    assert store.list_runs(strategy="ar") == []
    assert store.get_run(999) is None


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "runs.db"
    store = RunStore(path)
    errors: list[Exception] = []

    def writer() -> None:
        try:
            run_id = start(store)
            seq = 0
            for i in range(25):
                e = make_event(i)
                store.log_step(run_id, e, first_seq=seq)
                seq += len(e.new_tokens)
            store.finish_run(run_id, status="finished", token_ids=[], text="", metrics=None, stop_reason=None)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.db["steps"].count == 100
    assert all(r["finished"] == 1 for r in store.list_runs())


def test_proposer_info_round_trips_and_old_logs_gain_the_column(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)  # a version-1 log: steps without proposer_info
    conn.execute("CREATE TABLE steps (run_id INTEGER, step_index INTEGER, PRIMARY KEY (run_id, step_index))")
    conn.commit()
    conn.close()
    store = RunStore(path)
    assert "proposer_info" in store.db["steps"].columns_dict


def _tree_event(index: int = 0):
    """A tree step: root -> {a (accepted) -> {c (rejected), d (unchecked)}, b (rejected) -> e (unchecked)}."""
    from engine.events import TreeNode

    nodes = (
        TreeNode(0, -1, 0, 5, "root", None, None, None, None, "root", "model"),
        TreeNode(1, 0, 1, 11, NASTY, 0.6, 0.6, 0.7, 1.0, "accepted", "model"),
        TreeNode(2, 0, 1, 12, "b", None, None, 0.1, 0.2, "rejected", "retrieval"),
        TreeNode(3, 1, 2, 13, "c", 0.5, 0.3, 0.2, 0.4, "rejected", "both"),
        TreeNode(4, 1, 2, 14, "d", 0.2, 0.12, None, None, "unchecked", "model"),
        TreeNode(5, 2, 2, 15, "e", 0.9, None, None, None, "unchecked", "retrieval"),
    )
    draft = tuple(
        DraftedToken(position=n.depth - 1, token_id=n.token_id, text=n.text, draft_prob=n.draft_prob,
                     target_prob=n.target_prob, accept_prob=n.accept_prob,
                     uniform=None if n.verdict == "unchecked" else 0.5, verdict=n.verdict)
        for n in nodes[1:]
    )
    new = (NewToken(11, NASTY, "accepted"), NewToken(16, "z", "recovered"))
    return StepEvent(
        index=index, context_length=30, decision=LengthDecision(5, 5, "tree of 5 nodes", {}), draft=draft,
        output=OutputToken(16, "z", "recovered", 0.8), new_tokens=new, target_forwards=1,
        timings=PhaseTimings(0.01, 0.02, 0.001, 0.0, 0.031), tree=nodes,
    )


def test_tree_round_trips_with_its_drafted_nodes(tmp_path):
    import json

    store = RunStore(tmp_path / "runs.db")
    run_id = start(store)
    events = [make_event(0), _tree_event(1)]  # a chain step keeps tree == () and its positions
    store.log_step(run_id, events[0], first_seq=0)
    store.log_step(run_id, events[1], first_seq=2)
    assert store.load_events(run_id) == events
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    chain_tree, tree_json = [r[0] for r in store.db.execute("SELECT tree FROM steps ORDER BY step_index")]
    assert chain_tree is None and json.loads(tree_json)[1][4] == NASTY  # the text survives verbatim
    # several nodes share a depth: the drafted rows are keyed by draft order, all five kept
    positions = [r[0] for r in store.db.execute(
        "SELECT position FROM draft_tokens WHERE step_index = 1 ORDER BY position")]
    assert positions == [0, 1, 2, 3, 4]


def test_v4_log_gains_the_tree_column(tmp_path):
    path = tmp_path / "v4.db"
    old = RunStore(path)
    run_id = start(old)
    old.log_step(run_id, make_event(0), first_seq=0)
    with old.db.conn:  # what SpecViz 4 wrote: steps without a tree column
        old.db.execute("ALTER TABLE steps DROP COLUMN tree")
        old.db.execute("PRAGMA user_version = 4")
    old.close()
    store = RunStore(path)
    assert "tree" in store.db["steps"].columns_dict
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.load_events(run_id) == [make_event(0)]  # old steps replay as chains
    store.log_step(run_id, _tree_event(1), first_seq=2)
    assert store.load_events(run_id)[1].tree == _tree_event(1).tree


def _lattice_event(index: int = 0):
    """A diffusion step over a block of 4: path " a" (accepted), "<b>&" from outside the top 2 (rejected, not
    scored), "中" (unchecked); the last column was not proposed."""
    from engine.events import LatticeColumn

    cands = [
        (TokenCandidate(11, " a", 0.7), TokenCandidate(12, NASTY, 0.2)),
        (TokenCandidate(21, "é", 0.5), TokenCandidate(22, " b", 0.25)),
        (TokenCandidate(31, "中", 0.9), TokenCandidate(32, "\n", 0.05)),
        (TokenCandidate(41, "<eos>", 0.6),),
    ]
    lattice = (
        LatticeColumn(0, cands[0], 11, " a", 0.7, 0, 0.65),
        LatticeColumn(1, cands[1], 23, "<b>&", 0.1, None, None),
        LatticeColumn(2, cands[2], 31, "中", 0.9, 0, 0.4),
        LatticeColumn(3, cands[3]),
    )
    verdicts = ("accepted", "rejected", "unchecked")
    draft = tuple(
        DraftedToken(position=c.position, token_id=c.path_token_id, text=c.path_text, draft_prob=c.path_prob,
                     target_prob=None if v == "unchecked" else 0.3, accept_prob=None if v == "unchecked" else 1.0,
                     uniform=None, verdict=v)
        for c, v in zip(lattice, verdicts)
    )
    new = (NewToken(11, " a", "accepted"), NewToken(24, "c", "recovered"))
    return StepEvent(
        index=index, context_length=30, decision=LengthDecision(4, 3, "ADL: L = 3", {"signal": 1.5, "signal_name": "mean"}),
        draft=draft, output=OutputToken(24, "c", "recovered", 0.8), new_tokens=new, target_forwards=1,
        timings=PhaseTimings(0.01, 0.02, 0.001, 0.0, 0.031), proposer_info={"summary": "CPS over 4 positions"},
        lattice=lattice,
    )


def test_lattice_round_trips_verbatim(tmp_path):
    import json

    store = RunStore(tmp_path / "runs.db")
    run_id = start(store)
    events = [make_event(0), _lattice_event(1)]  # a chain step keeps lattice == ()
    store.log_step(run_id, events[0], first_seq=0)
    store.log_step(run_id, events[1], first_seq=2)
    replayed = store.load_events(run_id)
    assert replayed == events
    assert replayed[1].lattice[1].path_rank is None and replayed[1].lattice[3].path_token_id is None
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
    chain_lattice, lattice_json = [r[0] for r in store.db.execute("SELECT lattice FROM steps ORDER BY step_index")]
    assert chain_lattice is None
    columns = json.loads(lattice_json)
    assert columns[0][1][1] == [12, NASTY, 0.2] and columns[1][2:] == [23, "<b>&", 0.1, None, None]
    assert "中" in lattice_json and "<b>&" in lattice_json  # stored as text, not \\u escapes or entities
    # the path tokens are the step's drafted rows, keyed by their position
    positions = [r[0] for r in store.db.execute("SELECT position FROM draft_tokens WHERE step_index = 1 ORDER BY position")]
    assert positions == [0, 1, 2]


def test_v5_log_gains_the_lattice_column(tmp_path):
    path = tmp_path / "v5.db"
    old = RunStore(path)
    run_id = start(old)
    old.log_step(run_id, _tree_event(0), first_seq=0)
    with old.db.conn:  # what SpecViz 5 wrote: steps without a lattice column
        old.db.execute("ALTER TABLE steps DROP COLUMN lattice")
        old.db.execute("PRAGMA user_version = 5")
    old.close()
    store = RunStore(path)
    assert "lattice" in store.db["steps"].columns_dict
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
    assert store.load_events(run_id) == [_tree_event(0)]  # old steps replay without a lattice
    store.log_step(run_id, _lattice_event(1), first_seq=2)
    assert store.load_events(run_id)[1].lattice == _lattice_event(1).lattice


def test_a_step_is_written_whole_or_not_at_all(tmp_path):
    """One transaction per step: when its output tokens cannot be written (here: a sequence number already taken),
    neither are the step's row and drafted tokens (a kill between two inserts would otherwise leave half a step)."""
    import sqlite3

    store = RunStore(tmp_path / "runs.db")
    run_id = start(store)
    store.log_step(run_id, make_event(0), first_seq=0)
    with pytest.raises(sqlite3.IntegrityError):
        store.log_step(run_id, make_event(1), first_seq=0)  # seq 0 is step 0's
    db = store.db
    assert [r["step_index"] for r in db["steps"].rows_where("run_id = ?", [run_id])] == [0]
    assert {r["step_index"] for r in db["draft_tokens"].rows_where("run_id = ?", [run_id])} == {0}
    assert store.load_events(run_id) == [make_event(0)]
