"""The draft-tree panel: the tree figure of one step, the tree fields of the acceptance history, the
explorer's tree plot following the step, and trees replayed from the SQLite log. Hand-built events only."""

from __future__ import annotations

import random

import pytest

from engine import SamplingConfig, parse_strategy
from engine.events import DraftedToken, LengthDecision, NewToken, OutputToken, PhaseTimings, StepEvent, TreeNode
from specviz.figures import (
    BLUE,
    OUTPUT_COLOURS,
    TREE_HEIGHT,
    TREE_SHAPE_TRACE_NAMES,
    TREE_STYLE,
    acceptance_figure,
    draft_tree_figure,
    tree_rows,
    tree_shape,
)
from specviz.store import RunStore

SCRIPT = "<script>alert(1)</script>"


def tree_step(nodes: list[tuple[int, str, str]], output_kind: str = "recovered", output_text: str = " ran",
              index: int = 0) -> StepEvent:
    """A tree step from (parent, text, verdict) per drafted node, parents first; node 0 is the root."""
    tree = [TreeNode(0, -1, 0, 1, " Once", None, None, None, None, "root", "model")]
    for i, (parent, text, verdict) in enumerate(nodes, start=1):
        tried = verdict in ("accepted", "rejected")
        reached = tree[parent].verdict in ("root", "accepted")
        tree.append(TreeNode(i, parent, tree[parent].depth + 1, 100 + i, text, 0.5, 0.5 ** (tree[parent].depth + 1),
                             0.4 if reached else None, 0.8 if tried else None, verdict,
                             "retrieval" if i % 3 == 0 else "model"))
    draft = tuple(DraftedToken(n.depth - 1, n.token_id, n.text, n.draft_prob, n.target_prob, n.accept_prob,
                               None if n.verdict == "unchecked" else 0.5, n.verdict) for n in tree[1:])
    accepted = tuple(NewToken(n.token_id, n.text, "accepted") for n in tree if n.verdict == "accepted")
    return StepEvent(
        index=index, context_length=12, decision=LengthDecision(len(nodes), len(nodes), "tree", {}), draft=draft,
        output=OutputToken(7, output_text, output_kind, 0.6), new_tokens=accepted + (NewToken(7, output_text, output_kind),),
        target_forwards=1, timings=PhaseTimings(0.01, 0.02, 0.001, 0.05 * index, 0.05 * index + 0.031), tree=tuple(tree),
    )


# root -> " the" (accepted) -> {SCRIPT (rejected), " cat" (accepted) -> {" sat" (rejected), " on" (unchecked)}}
#      -> " a" (rejected) -> " dog" (unchecked)
SAMPLE = [(0, " the", "accepted"), (0, " a", "rejected"), (1, SCRIPT, "rejected"), (1, " cat", "accepted"),
          (2, " dog", "unchecked"), (4, " sat", "rejected"), (4, " on", "unchecked")]


def random_tree_step(n_nodes: int, seed: int) -> StepEvent:
    """A random tree of n_nodes (root included) whose first-child path is accepted, its siblings rejected."""
    rng = random.Random(seed)
    parents = [-1]
    for i in range(1, n_nodes):
        parents.append(rng.randrange(max(0, i - 12), i))  # recent parents: deep and bushy trees alike
    path, node = {0}, 0
    while (kids := [i for i, p in enumerate(parents) if p == node]):
        node = kids[0]
        path.add(node)
    verdicts = [("accepted" if i in path else "rejected" if parents[i] in path else "unchecked")
                for i in range(1, n_nodes)]
    return tree_step([(parents[i], f" w{i}", verdicts[i - 1]) for i in range(1, n_nodes)], output_kind="bonus")


def chain_step() -> StepEvent:
    draft = (DraftedToken(0, 11, " Hi", 0.6, 0.7, 1.0, 0.3, "accepted"),)
    return StepEvent(index=0, context_length=5, decision=LengthDecision(1, 1, "constant K = 1", {}), draft=draft,
                     output=OutputToken(12, "!", "bonus", 0.9), new_tokens=(NewToken(11, " Hi", "accepted"), NewToken(12, "!", "bonus")),
                     target_forwards=1, timings=PhaseTimings(0.01, 0.02, 0.001, 0.0, 0.031))


def node_traces(fig) -> dict:
    return {t.name: t for t in fig.data if t.mode == "markers+text"}


def edge_traces(fig) -> list:
    return [t for t in fig.data if t.mode == "lines"]


def positions(fig) -> list[tuple[float, float]]:
    return [(x, y) for t in node_traces(fig).values() for x, y in zip(t.x, t.y)]


def test_nodes_are_coloured_by_verdict():
    fig = draft_tree_figure(tree_step(SAMPLE))
    traces = node_traces(fig)
    expected = {"root": [0], "accepted": [1, 4], "rejected": [2, 3, 6], "unchecked": [5, 7]}
    depths = {"root": [0], "accepted": [1, 2], "rejected": [1, 2, 3], "unchecked": [2, 3]}
    for verdict, nodes in expected.items():
        style = TREE_STYLE[verdict]
        trace = traces[style.name]
        assert (trace.marker.color, trace.marker.symbol) == (style.colour, style.symbol)
        assert len(trace.x) == len(nodes) and sorted(trace.x) == depths[verdict]
    assert TREE_STYLE["accepted"].colour == BLUE and TREE_STYLE["rejected"].opacity < 1  # emphasised, dimmed
    assert len({style.colour for style in TREE_STYLE.values()}) == 4  # root, accepted, rejected, grey unchecked


def test_output_token_hangs_after_the_last_accepted_node():
    fig = draft_tree_figure(tree_step(SAMPLE, output_kind="recovered"))
    out = node_traces(fig)["+ recovered (target's token)"]
    assert list(out.x) == [3] and out.marker.color == OUTPUT_COLOURS["recovered"]
    accepted = node_traces(fig)[TREE_STYLE["accepted"].name]
    cat_y = accepted.y[list(accepted.x).index(2)]
    output_edge = edge_traces(fig)[-1]
    assert output_edge.line.color == OUTPUT_COLOURS["recovered"] and output_edge.line.dash == "dot"
    assert list(output_edge.x[:2]) == [2, 3] and output_edge.y[0] == cat_y and output_edge.y[1] == out.y[0]
    bonus = draft_tree_figure(tree_step([(0, " a", "accepted")], output_kind="bonus"))
    assert node_traces(bonus)["+ bonus (target's token)"].marker.color == OUTPUT_COLOURS["bonus"]


def test_accepted_path_edges_are_emphasised():
    fig = draft_tree_figure(tree_step(SAMPLE))
    edges = edge_traces(fig)
    widest = max(edges, key=lambda t: t.line.width)
    dimmed = [t for t in edges if t.line.color in (TREE_STYLE["rejected"].colour, TREE_STYLE["unchecked"].colour)]
    assert widest.line.color == BLUE and widest.line.width > 2 * max(t.line.width for t in dimmed)
    # exactly the accepted path's two edges: root -> " the" -> " cat" (depths 0 -> 1 -> 2)
    segments = [tuple(widest.x[i:i + 2]) for i in range(0, len(widest.x), 3)]
    assert segments == [(0, 1), (1, 2)]
    assert len(dimmed) == 2 and all(t.opacity < 1 for t in dimmed)
    assert fig.data.index(widest) > max(fig.data.index(t) for t in dimmed)  # drawn on top


def test_model_text_is_escaped_in_labels_hover_and_title():
    fig = draft_tree_figure(tree_step(SAMPLE, output_text="<b>x</b>"))
    texts = [str(v) for t in fig.data for v in (*(t.text or ()), *(t.hovertext or ()))] + [fig.layout.title.text]
    joined = " ".join(texts)
    assert "<script" not in joined and "<b>x" not in joined
    assert "&lt;script&gt;" in joined and "&lt;b&gt;x&lt;/b&gt;" in joined
    rejected = node_traces(fig)[TREE_STYLE["rejected"].name]
    hover = next(h for h in rejected.hovertext if "script" in h)
    assert "drafter q = 0.500" in hover and "target p = 0.400" in hover and "acceptance prob = 0.800" in hover
    assert "path prob" in hover and "source:" in hover


@pytest.mark.parametrize("n_nodes, seed", [(1, 0), (2, 0), (8, 1), (30, 2), (81, 3), (81, 4)])
def test_layout_has_no_overlaps_and_children_stay_near_their_parent(n_nodes, seed):
    event = random_tree_step(n_nodes, seed)
    fig = draft_tree_figure(event)
    points = positions(fig)
    assert len(points) == n_nodes + 1 == len(set(points))  # every node and the output token, each on its own spot
    assert TREE_HEIGHT[0] <= fig.layout.height <= TREE_HEIGHT[1]
    parents = [n.parent for n in event.tree]
    rows = tree_rows(parents)
    for node, parent in enumerate(parents):
        kids = [rows[i] for i, p in enumerate(parents) if p == node]
        if kids:
            assert min(kids) <= rows[node] <= max(kids)  # a parent sits within its children's band
        if parent >= 0:
            siblings = [i for i, p in enumerate(parents) if p == parent]
            assert rows[siblings[0]] <= rows[node] <= rows[siblings[-1]]


def test_large_trees_keep_the_produced_labels():
    bushy = [(0, " a", "accepted"), (1, " b", "rejected")] + [(1, f" c{i}", "unchecked") for i in range(78)]
    fig = draft_tree_figure(tree_step(bushy))  # 80 leaf rows
    assert fig.layout.height == TREE_HEIGHT[1]
    traces = node_traces(fig)
    assert all(traces[TREE_STYLE["accepted"].name].text)
    assert not any(traces[TREE_STYLE["unchecked"].name].text)  # too dense: unchecked text only in the hover
    assert all(traces[TREE_STYLE["unchecked"].name].hovertext)


def test_chain_steps_have_no_tree_figure():
    assert draft_tree_figure(chain_step()) is None


def test_acceptance_history_shows_tree_size_and_depths():
    events = [tree_step(SAMPLE, index=0), tree_step([(0, " a", "rejected")], index=1)]
    assert [tree_shape(e) for e in events] == [(7, 3, 2), (1, 1, 0)]
    fig = acceptance_figure(events)
    by_name = {t.name: t for t in fig.data}
    depth, size = by_name[TREE_SHAPE_TRACE_NAMES[0]], by_name[TREE_SHAPE_TRACE_NAMES[1]]
    assert list(depth.y) == [3, 1] and list(size.y) == [7, 1] and size.yaxis == "y4"
    assert fig.layout.yaxis4.overlaying == "y"
    assert "tree: 7 nodes, depth 3, accepted depth 2" in by_name["accepted drafts"].hovertext[0]
    chain = {t.name for t in acceptance_figure([chain_step()]).data}
    assert not chain & set(TREE_SHAPE_TRACE_NAMES)


def test_explorer_tree_plot_follows_the_step_and_hides_for_chains():
    from specviz.ui.panels import _tree_update

    events = [tree_step(SAMPLE, index=0), tree_step([(0, " a", "accepted")], output_kind="bonus", index=1)]
    latest, first = _tree_update(events, None), _tree_update(events, 0)
    assert latest["visible"] and first["visible"]
    assert "Step 1:" in latest["value"].layout.title.text and "Step 0:" in first["value"].layout.title.text
    assert _tree_update([chain_step()], 0) == {"__type__": "update", "visible": False}
    assert _tree_update([], None)["visible"] is False


def test_replayed_tree_draws_the_same_figure(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    run_id = store.start_run(strategy=parse_strategy("draft_model"), sampling=SamplingConfig(), target="t",
                             drafter="d", prompt="p", prompt_tokens=1, max_new_tokens=8)
    event = tree_step(SAMPLE)
    store.log_step(run_id, event, first_seq=0)
    (replayed,) = store.load_events(run_id)
    assert replayed == event
    assert draft_tree_figure(replayed).to_dict() == draft_tree_figure(event).to_dict()


def test_a_real_tree_run_logs_replays_and_draws(tmp_path, tiny_target, tiny_noisy_drafter, single_thread):
    """End to end on the tiny models: the lead's static_tree strategy, its events logged, replayed and drawn."""
    from engine import run_to_completion
    from engine.api import build_decoder
    from engine.loading.model_cache import ModelCache

    models = ModelCache(max_models=4, loader=lambda spec, progress=None: tiny_noisy_drafter)
    strategy = parse_strategy("static_tree", {"drafter": "tiny-noisy", "vocab_trim": 0})
    decoder = build_decoder(strategy, tiny_target, models, SamplingConfig(temperature=0.7, seed=3))
    events = run_to_completion(decoder, [1, 2, 3, 4], 16).events
    assert all(e.tree for e in events) and any(e.num_accepted for e in events)
    store = RunStore(tmp_path / "runs.db")
    run_id = store.start_run(strategy=strategy, sampling=SamplingConfig(temperature=0.7, seed=3), target="tiny",
                             drafter="tiny-noisy", prompt="p", prompt_tokens=4, max_new_tokens=16)
    seq = 0
    for e in events:
        store.log_step(run_id, e, first_seq=seq)
        seq += len(e.new_tokens)
    assert store.load_events(run_id) == events
    for e in events:
        fig = draft_tree_figure(e)
        assert len(set(positions(fig))) == len(e.tree) + 1
    assert TREE_SHAPE_TRACE_NAMES[0] in {t.name for t in acceptance_figure(events).data}


def test_copied_nodes_get_a_ring_that_only_fused_trees_show():
    """A fused tree (hybrid, RASD) marks the nodes copied from text (every third node in tree_step) with a ring."""
    fig = draft_tree_figure(tree_step(SAMPLE))
    rings = [t for t in fig.data if t.name == "copied from earlier text"]
    assert len(rings) == 1 and rings[0].marker.symbol == "square-open"
    assert sorted(zip(rings[0].x, rings[0].y)) == sorted(p for p in positions(fig) if p in set(zip(rings[0].x, rings[0].y)))
    assert len(rings[0].x) == 2  # nodes 3 and 6
    assert all("copied from earlier text" in h for h in rings[0].hovertext)
    model_only = tree_step([(p, t, v) for p, t, v in SAMPLE[:2]])  # nodes 1 and 2: both from the model
    assert not [t for t in draft_tree_figure(model_only).data if t.name == "copied from earlier text"]
