"""The Learn tab's lessons as data and pure computations (no Gradio, no plotly): the lesson texts, the phases of
one draft-verify step in slow motion, the numbers behind one accept / reject decision, the analytic tokens per
step and speedup bound next to a recorded trace's measured point, the chain step that matches a tree step, the
diffusion lattice in words, the length policies' numbers, and the strategy recommendation.

Every number shown by a lesson comes from a recorded trace (`specviz.traces`), never invented. Example:

>>> expected_tokens_per_step(0.5, 2)
1.75
>>> round(speedup_bound(0.5, 2, 0.25), 3)
1.167
>>> recommend("none", False, "greedy").strategy
'draft_model'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from engine.analysis.oracle import oracle_report
from engine.events import DraftedToken, StepEvent, TreeNode
from engine.metrics import RunMetrics

N_LESSONS = 7
QUERY_PARAM = "lesson"


@dataclass(frozen=True)
class Lesson:
    number: int
    title: str
    traces: tuple[str, ...]  # the recorded traces it reads
    text: str  # 2-5 sentences of guided text (markdown)
    try_this: str  # the one thing to do, in one sentence


LESSONS: tuple[Lesson, ...] = (
    Lesson(1, "One draft-verify step in slow motion", ("chain_greedy",),
           "A small **drafter** model guesses the next few tokens one at a time; that is cheap. The big **target** "
           "model then checks all the guesses in **one** forward pass, reading them left to right. It keeps the "
           "guesses it agrees with, stops at the first one it does not, and always adds one token of its own. "
           "So one expensive target pass can produce several tokens.",
           "Press **Next phase** to walk through a real step; pick another step with the slider."),
    Lesson(2, "Why a token is accepted or rejected", ("chain_sampled",),
           "When the models *sample*, the target keeps a drafted token with probability **min(1, p / q)**: p is the "
           "target's probability of that token, q the drafter's. A uniform random number u between 0 and 1 is "
           "drawn; if u falls below the threshold, the token stays. On a rejection the target draws its own token "
           "from the **residual** max(0, p − q), renormalised: exactly the probability the drafter under-covered. "
           "This rule makes the output follow the target's distribution exactly.",
           "Pick a drafted token from the list: accepted ones and rejected ones."),
    Lesson(3, "Draft length and the cost trade-off", ("chain_greedy", "ar"),
           "If each drafted token is accepted with probability a (given the ones before it were), a draft of K "
           "tokens yields on average **(1 − a^(K+1)) / (1 − a)** tokens per target pass. But every drafted token "
           "costs drafter time: c is the drafter's cost per token relative to one target pass. The speedup bound "
           "of Leviathan et al. divides the two: longer drafts pay off only while a is high and c is low.",
           "Drag a, K and c; the star is what the recorded trace really measured."),
    Lesson(4, "Trees vs chains", ("tree", "chain_greedy"),
           "A chain bets on one guess per position: one rejection ends it. A **draft tree** keeps several "
           "alternatives per position, and the target checks every branch in the same single pass (with a tree "
           "attention mask), then follows the longest branch it agrees with. More tokens are checked per pass, so "
           "more of them are wasted, but the accepted path is longer on average.",
           "Move the step slider: the tree of that step beside the chain's step at the same point in the text."),
    Lesson(5, "The diffusion lattice and the path through it", ("diffusion",),
           "A diffusion drafter does not guess left to right: it fills a whole block of positions in **one** pass, "
           "giving a few candidate tokens per position (a lattice). A path search then picks one candidate per "
           "position that reads well as a sequence. The target verifies that path like a chain; the first refusal "
           "cuts it.",
           "Move the step slider to see another lattice and where verification cut its path."),
    Lesson(6, "Adaptive draft length", ("chain_greedy", "chain_adaptive", "chain_confidence"),
           "The best draft length changes from step to step: easy text rewards long drafts, hard text wastes them. "
           "A **length policy** picks K every step: fixed, a simple heuristic (longer after a full accept, shorter "
           "after a rejection), or a confidence rule (stop drafting when the drafter is unsure). The orange "
           "diamonds are the hindsight oracle: the best length for each step, known only after the fact.",
           "Pick a policy: its lengths step by step, its reasons, and the three policies' numbers."),
    Lesson(7, "Choosing a strategy", ("showcase", "chain_greedy", "chain_sampled", "tree", "diffusion", "ar"),
           "No strategy wins everywhere. Copying from repeated text costs almost nothing; a draft head trained on "
           "the target's own features guesses best; under sampling, acceptance falls and several alternatives help. "
           "And on a small CPU model the target pass is cheap, so drafting overhead can eat the whole gain: always "
           "measure against plain decoding.",
           "Answer the three questions; the evidence is measured on the recorded traces."),
)


def clamp_lesson(n: object) -> int:
    """A lesson number in 1..N_LESSONS from anything (a dropdown value, a query parameter); 1 when unreadable.

    >>> [clamp_lesson(x) for x in (0, 3, "5", 99, "x", None)]
    [1, 3, 5, 7, 1, 1]
    """
    try:
        value = int(str(n).strip())
    except (TypeError, ValueError):
        return 1
    return max(1, min(N_LESSONS, value))


def lesson_from_query(params: dict[str, str] | None) -> int | None:
    """The lesson a `?lesson=N` link asks for, or None when the link names none."""
    if not params or QUERY_PARAM not in params:
        return None
    return clamp_lesson(params[QUERY_PARAM])


def step_lesson(current: object, delta: int) -> int:
    """The lesson `delta` away from `current`, kept within 1..N_LESSONS."""
    return clamp_lesson(clamp_lesson(current) + delta)


# -- lesson 1: one step in slow motion -------------------------------------------------------------

@dataclass(frozen=True)
class Phase:
    """One moment of a draft-verify step: how much of the step is revealed, and the sentence describing it."""

    key: str  # "context" | "draft" | "score" | "check" | "output" | "commit"
    title: str
    caption: str
    drafted: int  # draft tokens revealed so far
    scored: bool  # the target's pass has run
    checked: int  # draft tokens whose verdict is revealed
    output: bool  # the target's own token is revealed
    committed: bool


def checked_count(event: StepEvent) -> int:
    """Drafted tokens the verifier actually looked at: the accepted ones and the first rejection."""
    return sum(1 for d in event.draft if d.verdict in ("accepted", "rejected"))


def _check_caption(d: DraftedToken, k: int, sampled: bool) -> str:
    """One sentence for the verifier's look at draft position d.position."""
    token = f"“{visible(d.text)}”"
    if sampled and d.uniform is not None:
        rule = f"u = {d.uniform:.2f} vs min(1, p/q) = {d.accept_prob:.2f}"
    else:
        best = d.target_top[0].text if d.target_top else None
        rule = "it is the target's top choice" if d.verdict == "accepted" else (
            f"the target's top choice is “{visible(best)}”" if best is not None else "it is not the target's top choice")
    if d.verdict == "accepted":
        end = " All drafted tokens were accepted!" if d.position == k - 1 else ""
        return f"Position {d.position + 1}: {token} is accepted ({rule}).{end}"
    later = k - d.position - 1
    tail = f" The {later} token{'s' if later != 1 else ''} after it {'are' if later != 1 else 'is'} thrown away unchecked." if later else ""
    return f"Position {d.position + 1}: {token} is rejected ({rule}). This is the first rejection: checking stops.{tail}"


def _output_caption(event: StepEvent) -> str:
    o = event.output
    appended = any(n.kind == o.kind for n in event.new_tokens)
    why = {"recovered": "in place of the rejected token, from its own distribution there",
           "bonus": "for free after the fully accepted draft: its pass already scored that position",
           "baseline": "on its own: nothing was drafted"}.get(o.kind, "")
    note = "" if appended else " (The run stopped before it was appended.)"
    return f"The target adds its own token “{visible(o.text)}” ({o.kind}, probability {o.prob:.2f}) {why}.{note}"


def slow_motion_phases(event: StepEvent) -> list[Phase]:
    """The phases of one chain step, in order: context, each drafted token, the target's single pass, each check
    (up to the first rejection), the target's own token, and the commit."""
    k = event.num_drafted
    t = event.timings
    sampled = any(d.uniform is not None for d in event.draft)
    phases = [Phase("context", "Context", f"Step {event.index} starts from {event.context_length} tokens of context "
                    "(the prompt plus everything committed so far).", 0, False, 0, False, False)]
    for d in event.draft:  # the drafter proposes one token per drafter pass
        q = "" if d.draft_prob is None else f" with probability q = {d.draft_prob:.2f}"
        phases.append(Phase("draft", f"Draft {d.position + 1} of {k}",
                            f"The drafter proposes token {d.position + 1}: “{visible(d.text)}”{q}. "
                            "Each drafted token needs one (cheap) drafter pass.", d.position + 1, False, 0, False, False))
    phases.append(Phase("score", "Target pass", (
        f"The target runs ONE forward pass over the context plus all {k} drafts and scores {k + 1} positions at once "
        f"({t.verify_s * 1000:.0f} ms; drafting all {k} took {t.draft_s * 1000:.0f} ms)."), k, True, 0, False, False))
    for i, d in enumerate(event.draft[: checked_count(event)]):  # left-to-right checks, up to the first refusal
        phases.append(Phase("check", f"Check {i + 1}", _check_caption(d, k, sampled), k, True, i + 1, False, False))
    phases.append(Phase("output", "Target's token", _output_caption(event), k, True, checked_count(event), True, False))
    n = len(event.new_tokens)
    phases.append(Phase("commit", "Committed", (
        f"Committed: {n} new token{'s' if n != 1 else ''} for one target pass "
        f"({event.num_accepted} accepted + 1 {event.output.kind}). Plain decoding needs one target pass per token."),
        k, True, checked_count(event), True, True))
    return phases


def advance(events: Sequence[StepEvent], step: int, phase: int) -> tuple[int, int]:
    """The (step, phase) after pressing Next phase: the next phase, or the next step's first phase after the last
    one (back to step 0 after the last step)."""
    step = max(0, min(int(step), len(events) - 1))
    if phase + 1 < len(slow_motion_phases(events[step])):
        return step, phase + 1
    return (step + 1) % len(events), 0


def context_text(events: Sequence[StepEvent], step: int) -> str:
    """The output text committed before `step` (the prompt excluded)."""
    return "".join(t.text for e in events[:step] for t in e.new_tokens)


def visible(text: str | None) -> str:
    """Token text with visible whitespace (not escaped: escape at the page)."""
    if not text:
        return "∅"
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")


# -- lesson 2: one accept / reject decision ----------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    """The numbers of one verifier decision on a drafted token (sampling)."""

    step: int
    position: int
    text: str
    p: float
    q: float
    threshold: float  # min(1, p / q)
    u: float | None
    verdict: str
    target_top: tuple  # (text, p) of the target's recorded top candidates here
    residual_top: tuple  # (text, prob) of the recorded top of the residual (rejections only)
    output_text: str | None  # the token the target drew instead (rejections only)


def decision_choices(events: Sequence[StepEvent]) -> list[tuple[str, str]]:
    """(label, "step:position") for every drafted token the verifier checked."""
    out = []
    for e in events:
        for d in e.draft:
            if d.verdict in ("accepted", "rejected"):
                out.append((f"step {e.index} · position {d.position + 1} · “{visible(d.text)}” · {d.verdict}",
                            f"{e.index}:{d.position}"))
    return out


def default_decision(events: Sequence[StepEvent]) -> str:
    """The first rejection with a visible residual (a clear first example), else the first checked token."""
    for e in events:
        for d in e.draft:
            if d.verdict == "rejected" and d.uniform is not None and e.output.residual_top:
                return f"{e.index}:{d.position}"
    return decision_choices(events)[0][1]


def decision_at(events: Sequence[StepEvent], key: str) -> Decision:
    """The decision on drafted token `key` ("step:position"); the default one when the key is unreadable."""
    try:
        step, position = (int(x) for x in str(key).split(":"))
        d = events[step].draft[position]
    except (ValueError, IndexError):
        return decision_at(events, default_decision(events))
    e = events[step]
    rejected = d.verdict == "rejected"
    return Decision(
        step=step, position=position, text=d.text, p=d.target_prob or 0.0, q=d.draft_prob or 0.0,
        threshold=1.0 if d.accept_prob is None else d.accept_prob, u=d.uniform, verdict=d.verdict,
        target_top=tuple((c.text, c.prob) for c in d.target_top),
        residual_top=tuple((c.text, c.prob) for c in e.output.residual_top) if rejected else (),
        output_text=e.output.text if rejected else None,
    )


# -- lesson 3: draft length and cost -------------------------------------------------------------------

def expected_tokens_per_step(a: float, k: int) -> float:
    """E[tokens per target pass] = (1 - a^(K+1)) / (1 - a) for i.i.d. acceptance a and K drafts (K + 1 at a = 1)."""
    return float(k + 1) if a >= 1 else (1 - a ** (k + 1)) / (1 - a)


def speedup_bound(a: float, k: int, c: float) -> float:
    """Leviathan et al.'s expected speedup over plain decoding: E[tokens per pass] / (c K + 1), where c is the
    drafter's cost per token relative to one target pass (verification priced as one plain target pass)."""
    return expected_tokens_per_step(a, k) / (c * k + 1)


def best_k(a: float, c: float, max_k: int = 12) -> int:
    """The draft length with the highest speedup bound (0 = do not draft)."""
    return max(range(max_k + 1), key=lambda k: (speedup_bound(a, k, c), -k))


@dataclass(frozen=True)
class Measured:
    """A chain trace's measured numbers, in the analytic model's terms."""

    k: int  # the typical (median) drafted length
    a: float  # accepted / checked: acceptance given the tokens before were accepted
    acceptance_rate: float  # accepted / drafted (the usual metric)
    mean_acceptance_length: float  # tokens per target pass
    c: float  # drafter time per token / one plain target step (from the ar trace)
    verify_ratio: float  # one verification pass / one plain target step
    speedup: float  # tokens per second / the ar trace's tokens per second
    tokens_per_s: float
    baseline_tokens_per_s: float
    draft_ms_per_token: float
    verify_ms: float
    plain_step_ms: float
    oracle_lengths: dict[int, int]  # hindsight-best length -> steps
    oracle_bounded: int  # steps whose whole draft was accepted (the oracle could not look further)


def measure(events: Sequence[StepEvent], baseline: Sequence[StepEvent]) -> Measured:
    """The trace's measured point: acceptance, costs from its timings (the baseline: the `ar` trace on the same
    prompt and machine) and the hindsight oracle's lengths."""
    m, b = RunMetrics.from_events(events), RunMetrics.from_events(baseline)
    checked = sum(checked_count(e) for e in events)
    plain_step = b.verify_s / b.steps  # one target pass for one token
    draft_per_token = m.draft_s / m.drafted if m.drafted else 0.0
    verify = m.verify_s / m.steps
    drafted = sorted(e.num_drafted for e in events if e.num_drafted)
    report = oracle_report(events)
    steps = report.steps if report else ()
    return Measured(
        k=drafted[len(drafted) // 2] if drafted else 0, a=m.accepted / checked if checked else 0.0,
        acceptance_rate=m.acceptance_rate or 0.0, mean_acceptance_length=m.mean_acceptance_length or 1.0,
        c=draft_per_token / plain_step, verify_ratio=verify / plain_step,
        speedup=(m.tokens_per_s or 0.0) / (b.tokens_per_s or 1.0), tokens_per_s=m.tokens_per_s or 0.0,
        baseline_tokens_per_s=b.tokens_per_s or 0.0, draft_ms_per_token=draft_per_token * 1000,
        verify_ms=verify * 1000, plain_step_ms=plain_step * 1000,
        oracle_lengths=dict(sorted(Counter(s.oracle_k for s in steps).items())),
        oracle_bounded=sum(1 for s in steps if s.bounded),
    )


# -- lesson 4: trees vs chains -------------------------------------------------------------------------

def matching_chain_step(tree_event: StepEvent, chain: Sequence[StepEvent]) -> StepEvent:
    """The chain step at the same point of the text as a tree step (both greedy on the same prompt produce the
    same text): the one starting at the same context length, else the one whose tokens cover it, else the same
    index."""
    pos = tree_event.context_length
    for e in chain:
        if e.context_length == pos:
            return e
    for e in chain:
        if e.context_length <= pos < e.context_length + len(e.new_tokens):
            return e
    return chain[min(tree_event.index, len(chain) - 1)]


def chain_as_tree(event: StepEvent, root_text: str) -> StepEvent:
    """A chain step re-expressed as a one-branch draft tree (root = the last committed token), so the chain and
    the tree can be drawn alike."""
    nodes = [TreeNode(0, -1, 0, -1, root_text, None, None, None, None, "root", "root")]
    path = 1.0
    for d in event.draft:
        path = path * d.draft_prob if d.draft_prob is not None else None
        nodes.append(TreeNode(d.position + 1, d.position, d.position + 1, d.token_id, d.text, d.draft_prob, path,
                              d.target_prob, d.accept_prob if d.verdict != "unchecked" else None, d.verdict, "model"))
    return replace(event, tree=tuple(nodes))


def last_token_before(events: Sequence[StepEvent], event: StepEvent) -> str:
    """The text of the last token committed before `event` (the tree's root); empty before the first step."""
    before = [t for e in events if e.index < event.index for t in e.new_tokens]
    return before[-1].text if before else ""


@dataclass(frozen=True)
class RunSummary:
    name: str
    title: str
    mean_acceptance_length: float
    acceptance_rate: float | None
    target_passes: int
    drafted_per_step: float
    new_tokens: int
    tokens_per_s: float


def summarise(name: str, title: str, events: Sequence[StepEvent]) -> RunSummary:
    m = RunMetrics.from_events(events)
    return RunSummary(name, title, m.mean_acceptance_length or 1.0, m.acceptance_rate, m.target_forwards,
                      m.drafted / m.steps if m.steps else 0.0, m.new_tokens, m.tokens_per_s or 0.0)


# -- lesson 5: the diffusion lattice -------------------------------------------------------------------

def lattice_story(event: StepEvent) -> list[str]:
    """The lattice step in plain sentences: the block, candidates per position, the path, the cut, the verdict."""
    columns = event.lattice
    if not columns:
        return [f"Step {event.index}: nothing drafted, so no lattice: {event.decision.reason}.",
                f"The target produced “{visible(event.output.text)}” on its own ({event.output.kind})."]
    depth = max(len(c.candidates) for c in columns)
    path = [c for c in columns if c.path_token_id is not None]
    off_top = sum(1 for c in path if c.path_rank not in (0, None))
    n = event.num_accepted
    lines = [
        f"Step {event.index}: one drafter pass filled {len(columns)} positions; each column shows its top {depth} "
        "candidates, darker = more likely.",
        f"The length policy allowed {event.decision.allowed}, so the path search proposed {len(path)} "
        f"token{'s' if len(path) != 1 else ''}: " + " ".join(f"“{visible(c.path_text)}”" for c in path) + "."
        + (f" At {off_top} position{'s' if off_top != 1 else ''} it left the top candidate to read better as a sequence."
           if off_top else " Here it took the top candidate at every position."),
    ]
    if n < len(path):
        d = event.draft[n]
        want = d.target_top[0].text if d.target_top else event.output.text
        lines.append(f"Verification accepted {n} and cut the path at +{n + 1}: the target wanted “{visible(want)}”, "
                     f"not “{visible(d.text)}”; it added “{visible(event.output.text)}” ({event.output.kind}).")
    else:
        lines.append(f"Verification accepted the whole path ({n} tokens) and the target added a bonus token "
                     f"“{visible(event.output.text)}”.")
    return lines


# -- lesson 6: adaptive draft length ---------------------------------------------------------------------

POLICIES = {  # radio label -> trace name
    "constant K = 4": "chain_greedy",
    "heuristic (grow after a full accept)": "chain_adaptive",
    "confidence (stop when unsure)": "chain_confidence",
}


@dataclass(frozen=True)
class PolicyRow:
    label: str
    trace: str
    mean_k: float
    acceptance_rate: float
    mean_acceptance_length: float
    tokens_per_s: float
    oracle_gap: float | None  # 1 - run / oracle tokens per second (same cost model)


def policy_row(label: str, trace: str, events: Sequence[StepEvent]) -> PolicyRow:
    m = RunMetrics.from_events(events)
    report = oracle_report(events)
    return PolicyRow(label, trace, m.drafted / m.steps if m.steps else 0.0, m.acceptance_rate or 0.0,
                     m.mean_acceptance_length or 1.0, m.tokens_per_s or 0.0, report.gap if report else None)


def step_reason(event: StepEvent) -> str:
    """The policy's reason for a step, plus the drafter's own stop note when it cut the draft short."""
    reason = event.decision.reason
    summary = event.proposer_info.get("summary")
    if summary and event.num_drafted < event.decision.allowed:
        reason += f"; {summary}"
    return reason


# -- lesson 7: choosing a strategy -----------------------------------------------------------------------

REPEATED_CHOICES = {"none": "no, fresh text", "context": "yes, in the prompt or output", "document": "yes, a document"}
HEAD_CHOICES = {True: "yes", False: "no"}
SAMPLING_CHOICES = {"greedy": "greedy (temperature 0)", "sampling": "sampling (temperature > 0)"}


@dataclass(frozen=True)
class Recommendation:
    strategy: str
    settings: str  # what to set in the Playground
    reason: str
    evidence: tuple[str, ...]  # recorded traces that bear on it, most relevant first


def recommend(repeated: str, trained_head: bool, sampling: str) -> Recommendation:
    """A strategy for the situation: is there text to copy from (none / context / document), is a draft head
    trained for the target, greedy or sampling."""
    sampled = sampling == "sampling"
    if repeated == "document":
        if trained_head:
            return Recommendation("hybrid_tree", "drafter = eagle", "a trained head plus copying from text in one tree: "
                                  "the head covers fresh text, copying covers the repeated spans", ("showcase", "tree"))
        return Recommendation("rasd_tree", "attach the document", "continuations retrieved from the document, merged "
                              "into the drafter's tree: long verbatim spans are accepted whole", ("showcase", "tree"))
    if repeated == "context":
        if trained_head:
            return Recommendation("hybrid_tree", "drafter = eagle", "the recorded showcase: an EAGLE head and n-gram "
                                  "copying in one tree had the longest accepted runs of all traces", ("showcase", "ar"))
        return Recommendation("prompt_lookup", "no drafter model needed", "copying what followed the same words earlier "
                              "costs almost nothing and is accepted whole when the text repeats", ("showcase", "ar"))
    if trained_head:
        return Recommendation("dynamic_tree", "drafter = eagle", "a head trained on the target's own features agrees "
                              "with it most; a dynamic tree keeps its best alternatives", ("tree", "chain_greedy"))
    if sampled:
        return Recommendation("rsd", "several branches per node", "sampling lowers acceptance (compare the sampled and "
                              "greedy chains); branches drawn without replacement give the verifier more chances",
                              ("chain_sampled", "chain_greedy", "ar"))
    return Recommendation("draft_model", "K = 2 to 4, or length policy = heuristic", "a small drafter from the same "
                          "family, with a short chain: the simplest lossless speed-up", ("chain_greedy", "tree", "ar"))
