"""HTML for the explorer's panels: token stream, legend, step inspector, metrics strip.

Pure functions over `StepEvent` lists (no Gradio, no model). Every piece of model output and
user input goes through `esc` (html.escape with quote=True) before it reaches the page, so a
prompt such as `<img src=x onerror=alert(1)>` shows as text and runs nothing.

Colour language (Okabe-Ito, colour-blind safe), always with a second cue besides colour:
accepted = blue + solid underline; recovered = vermillion + dotted underline; bonus = bluish
green + double underline; baseline = grey; rejected draft = reddish purple, struck through;
unchecked draft = dashed outline; prompt = italic, muted. The classes live in assets/style.css.

Screen readers: the token stream is a labelled region; each token's verdict is spoken after it (CSS alt text on
its class in assets/style.css, so the visible and copied text stay the model's own); the discarded drafts are a
labelled group, the inspector's tables have captions and the timing bar a text alternative.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from engine.events import DraftedToken, LengthDecision, NewToken, StepEvent, TokenCandidate
from engine.metrics import RunMetrics

TOKEN_KINDS = ("accepted", "recovered", "bonus", "baseline")
DRAFTER_TABLE = "the drafter's table"
STREAM_LABEL = "Token stream: the prompt, then each output token followed by its verdict"

KIND_HELP = {
    "accepted": "drafted and kept by the target's check",
    "recovered": "the target's own token at the first rejection (drawn from the residual max(0, p - q))",
    "bonus": "free extra token from the target after the whole draft was accepted",
    "baseline": "one token from the target alone (no draft this step)",
    "rejected": "drafted, but the target's check refused it",
    "unchecked": "drafted after a rejection: discarded without a test",
}


STOP_REASONS = {
    "eos": "the model ended its answer",
    "max_new_tokens": "max new tokens reached",
    "context_window": "context window full",
}


def esc(value: Any) -> str:
    """Escape anything (model text, prompts, error messages) for HTML text and attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt_prob(p: float | None) -> str:
    if p is None:
        return "—"
    if 0 < p < 0.001:
        return f"{p:.1e}"
    return f"{p:.3f}"


def fmt_ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.0f} ms"


def _short_prob(p: float) -> str:
    """Compact probability for dense tables: .84, .05, <.01."""
    if p >= 0.995:
        return "1.0"
    if p < 0.005:
        return "<.01"
    return f"{p:.2f}".lstrip("0")


def visible_text(text: str) -> str:
    """Token text for tables and tooltips: spaces, newlines and tabs as visible glyphs (not escaped)."""
    if text == "":
        return "∅"
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")


def _stream_text(text: str, line_breaks: bool = True) -> str:
    """Escaped token text for the stream: newlines stay line breaks (the panel is pre-wrap) with a ↵ mark.

    Discarded drafts (line_breaks=False) show the ↵ mark only, so they never break the output's lines."""
    if text == "":
        return ""
    out = esc(text).replace("\r", "")
    return out.replace("\n", '<span class="nl" aria-hidden="true">↵</span>' + ("\n" if line_breaks else ""))


def _candidates_line(cands: Sequence[TokenCandidate], limit: int = 5) -> str:
    return ", ".join(f"{visible_text(c.text)!s} {fmt_prob(c.prob)}" for c in cands[:limit])


# -- token stream --------------------------------------------------------------------------------

def _drafted_tooltip(step: StepEvent, d: DraftedToken) -> str:
    lines = [f"step {step.index} · draft position {d.position} · {d.verdict}", f"token: {visible_text(d.text)}"]
    lines.append(
        f"drafter prob q = {fmt_prob(d.draft_prob)}" + (" (n-gram draft: no drafter probabilities)" if d.draft_prob is None else "")
    )
    lines.append(f"target prob p = {fmt_prob(d.target_prob)}")
    lines.append(f"acceptance prob min(1, p/q) = {fmt_prob(d.accept_prob)}")
    if d.uniform is not None:
        lines.append(f"uniform draw u = {fmt_prob(d.uniform)} ({'u ≤ min(1, p/q): keep' if d.verdict == 'accepted' else 'u > min(1, p/q): reject'})")
    elif d.verdict in ("accepted", "rejected"):
        lines.append("uniform draw: none (greedy: keep it iff it is the target's top token)")
    if d.verdict == "unchecked":
        lines.append("not tested: an earlier draft token was rejected")
    if d.target_top:
        lines.append(f"target's top: {_candidates_line(d.target_top)}")
    return "\n".join(lines)


def _output_tooltip(step: StepEvent, n: NewToken) -> str:
    out = step.output
    k = step.num_accepted
    if n.kind == "recovered":
        rejected = step.draft[k] if k < len(step.draft) else None
        lines = [f"step {step.index} · draft position {k} · recovered (replaces the rejected draft token)"]
        if rejected is not None:
            lines += [
                f"rejected draft: {visible_text(rejected.text)}",
                f"drafter prob q = {fmt_prob(rejected.draft_prob)} · target prob p = {fmt_prob(rejected.target_prob)}",
                f"acceptance prob min(1, p/q) = {fmt_prob(rejected.accept_prob)} · uniform u = {fmt_prob(rejected.uniform)}",
            ]
        if rejected is not None and rejected.uniform is None:
            lines.append(f"this token's prob = {fmt_prob(out.prob)} under the target (greedy: its top token)")
        else:
            lines.append(f"this token's prob = {fmt_prob(out.prob)} (from the residual max(0, p - q), renormalised)")
    elif n.kind == "bonus":
        lines = [
            f"step {step.index} · draft position {k} · bonus (all {k} drafted tokens accepted)",
            "drafter prob q = — · min(1, p/q) = — · uniform u = — (not a draft)",
            f"target prob p = {fmt_prob(out.prob)} (drawn from the target's distribution after the draft)",
        ]
    else:
        lines = [
            f"step {step.index} · baseline (nothing drafted this step)",
            "drafter prob q = — · min(1, p/q) = — · uniform u = — (not a draft)",
            f"target prob p = {fmt_prob(out.prob)}",
        ]
    if out.residual_top:
        lines.append(f"drawn from, top: {_candidates_line(out.residual_top)}")
    return "\n".join(lines)


def _new_token_tooltip(step: StepEvent, i: int, n: NewToken) -> str:
    if n.kind == "accepted" and i < len(step.draft):
        return _drafted_tooltip(step, step.draft[i])
    return _output_tooltip(step, n)


def _token_span(kind: str, text: str, title: str, step: int, extra: str = "") -> str:
    cls = f"tok tok-{kind}" + (" tok-empty" if text == "" else "") + (f" {extra}" if extra else "")
    line_breaks = kind in TOKEN_KINDS  # output tokens only: discarded drafts must not break the output's lines
    return f'<span class="{cls}" data-step="{step}" title="{esc(title)}">{_stream_text(text, line_breaks)}</span>'


def _draft_tail(step: StepEvent) -> str:
    """The step's discarded draft tokens: rejected (struck through) then unchecked (dashed)."""
    parts = []
    for d in step.draft:
        if d.verdict == "accepted":
            continue
        parts.append(_token_span(d.verdict, d.text, _drafted_tooltip(step, d), step.index))
    if not parts:
        return ""
    return (
        f'<span class="draft-tail" role="group" aria-label="{esc("discarded draft tokens of step " + str(step.index))}" '
        f'title="{esc("discarded draft tokens of step " + str(step.index))}">'
        f'<span class="draft-tail-label" aria-hidden="true">✗</span>{"".join(parts)}</span>'
    )


def token_stream_html(
    events: Sequence[StepEvent],
    prompt: str | None = None,
    focus_step: int | None = None,
    running: bool = False,
    placeholder: str = "Run a prompt: the output appears here token by token.",
) -> str:
    """The prompt (italic, muted) then every new token coloured by how it was born.

    The discarded drafts of `focus_step` (default: the latest step) are shown struck through right
    after that step's tokens, and that step's tokens are outlined.
    """
    parts = [f'<div class="token-stream-inner" role="region" aria-label="{esc(STREAM_LABEL)}">']
    if prompt:
        parts.append(f'<div class="prompt-block"><span class="prompt-label">Prompt</span><span class="tok-prompt">{esc(prompt)}</span></div>')
    if not events:
        parts.append(f'<div class="stream-placeholder">{esc(placeholder)}</div>' if not running else '<div class="output-block"><span class="cursor">▍</span></div>')
        parts.append("</div>")
        return "".join(parts)
    if focus_step is None or not 0 <= focus_step < len(events):
        focus_step = len(events) - 1
    parts.append('<div class="output-block">')
    for step in events:
        focus = " tok-focus" if step.index == focus_step else ""
        for i, n in enumerate(step.new_tokens):
            kind = n.kind if n.kind in TOKEN_KINDS else "baseline"
            parts.append(_token_span(kind, n.text, _new_token_tooltip(step, i, n), step.index, focus.strip()))
        if step.index == focus_step:
            parts.append(_draft_tail(step))
    if running:
        parts.append('<span class="cursor" aria-hidden="true">▍</span>')
    last = events[-1]
    if last.stop_reason and not running:
        parts.append(f'<span class="stop-reason">[end: {esc(STOP_REASONS.get(last.stop_reason, last.stop_reason))}]</span>')
    parts.append("</div></div>")
    return "".join(parts)


def legend_html() -> str:
    items = [
        ("accepted", "accepted", "draft kept"),
        ("recovered", "recovered", "target's fix at a rejection"),
        ("bonus", "bonus", "extra token after a full accept"),
        ("baseline", "baseline", "target alone"),
        ("rejected", "rejected", "draft refused"),
        ("unchecked", "unchecked", "draft discarded untested"),
        ("prompt", "prompt", "your input"),
    ]
    spans = []
    for kind, label, note in items:
        help_text = KIND_HELP.get(kind, "the prompt you typed")
        spans.append(
            f'<span class="legend-item" role="listitem" title="{esc(help_text)}"><span class="tok tok-{kind}">{esc(label)}</span>'
            f'<span class="legend-note">{esc(note)}</span></span>'
        )
    return '<div class="legend" role="list" aria-label="Token colour legend">' + "".join(spans) + "</div>"


# -- step inspector ------------------------------------------------------------------------------

def _verdict_badge(verdict: str) -> str:
    return f'<span class="tok tok-{esc(verdict)} badge">{esc(verdict)}</span>'


def _cand_bars(cands: Sequence[TokenCandidate], chosen: int | None = None) -> str:
    if not cands:
        return '<div class="muted">no candidates recorded</div>'
    rows = []
    for c in cands:
        width = max(1.0, min(100.0, c.prob * 100))
        mark = " chosen" if chosen is not None and c.token_id == chosen else ""
        rows.append(
            f'<div class="cand{mark}"><code class="cand-text">{esc(visible_text(c.text))}</code>'
            f'<span class="cand-bar"><span style="width:{width:.1f}%"></span></span>'
            f'<span class="cand-prob">{fmt_prob(c.prob)}</span></div>'
        )
    return '<div class="cands">' + "".join(rows) + "</div>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{esc(fmt_prob(value) if 0 <= value <= 1 else f"{value:.3g}")}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    if isinstance(value, str):
        return f"<td><code>{esc(visible_text(value))}</code></td>"
    return f"<td>{esc(value)}</td>"


def proposer_info_html(info: dict[str, Any]) -> str:
    """The proposer's own account of a step (see engine.events.StepEvent.proposer_info), escaped."""
    parts = ['<div class="insp-section proposer-info"><div class="insp-title">Why the drafter proposed this</div>']
    if info.get("summary"):
        parts.append(f"<div>{esc(info['summary'])}</div>")
    scalars = [(k, v) for k, v in info.items() if k not in ("summary", "tables") and not isinstance(v, (dict, list))]
    if scalars:
        parts.append(
            '<div class="muted">' + " · ".join(
                f"{esc(k)} = <b>{esc(fmt_prob(v) if isinstance(v, float) and 0 <= v <= 1 else v)}</b>" for k, v in scalars
            ) + "</div>"
        )
    for table in info.get("tables") or []:
        if not isinstance(table, dict):
            continue
        head = "".join(f"<th>{esc(c)}</th>" for c in table.get("columns", []))
        body = "".join(
            "<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in table.get("rows", []) if isinstance(row, list)
        )
        parts.append(
            f'<div class="insp-subtitle">{esc(table.get("title", ""))}</div>'
            f'<div class="insp-table-wrap"><table class="insp-table">'
            f'<caption class="sr-only">{esc(table.get("title") or DRAFTER_TABLE)}</caption><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>"
        )
    parts.append("</div>")
    return "".join(parts)


def step_inspector_html(events: Sequence[StepEvent], index: int | None = None) -> str:
    if not events:
        return '<div class="inspector empty muted">No steps yet. Run a prompt (or open a logged run) and pick a step with the slider.</div>'
    if index is None:
        index = len(events) - 1
    index = max(0, min(int(index), len(events) - 1))
    step = events[index]
    out = ['<div class="inspector">', _step_head_html(step, len(events)), _decision_html(step.decision)]
    # what drove the proposal (proposer-specific state: n-gram table, retrieved candidates, exit layer, ...)
    if step.proposer_info:
        out.append(proposer_info_html(step.proposer_info))
    out += [_proposal_html(step), _target_token_html(step), _timings_html(step), "</div>"]
    return "".join(out)


def _step_head_html(step: StepEvent, n_steps: int) -> str:
    produced = len(step.new_tokens)
    kinds = [n.kind for n in step.new_tokens]
    parts = [f"{kinds.count('accepted')} accepted"] if step.num_drafted else []
    parts += [f"1 {k}" for k in kinds if k != "accepted"]
    summary = " + ".join(parts) or "none"
    return (
        f'<div class="insp-head"><b>Step {step.index}</b> of {n_steps} · context {step.context_length} tokens · '
        f'drafted {step.num_drafted} · produced <b>{produced}</b> token{"s" if produced != 1 else ""} ({esc(summary)})'
        + (f' · <span class="stop-reason">run ended: {esc(step.stop_reason)}</span>' if step.stop_reason else "")
        + "</div>"
    )


def _decision_html(d: LengthDecision) -> str:
    """The draft-length decision: what the policy asked for, what it got, and why."""
    inputs = ", ".join(f"{esc(k)}={esc(v)}" for k, v in d.inputs.items())
    return (
        '<div class="insp-section"><div class="insp-title">Draft length decision</div>'
        f'<div>requested <b>{d.requested}</b>, allowed <b>{d.allowed}</b> — {esc(d.reason)}'
        + (f' <span class="muted">({inputs})</span>' if inputs else "")
        + "</div></div>"
    )


def _proposal_html(step: StepEvent) -> str:
    """The proposal table: one row per drafted token with q, p, min(1, p/q), u and the verdict."""
    if not step.draft:
        return ('<div class="insp-section"><div class="insp-title">Proposal</div><div class="muted">Nothing drafted '
                'this step: the target produces one token on its own.</div></div>')
    greedy = all(t.uniform is None for t in step.draft if t.verdict != "unchecked")
    rows = []
    for t in step.draft:
        top = "".join(
            f'<span class="chip"><code>{esc(visible_text(c.text))}</code> {_short_prob(c.prob)}</span>'
            for c in t.target_top[:3]
        ) or "—"
        rows.append(
            f'<tr class="row-{esc(t.verdict)}"><td class="num">{t.position}</td>'
            f'<td><code>{esc(visible_text(t.text))}</code></td>'
            f'<td class="num">{fmt_prob(t.draft_prob)}</td><td class="num">{fmt_prob(t.target_prob)}</td>'
            f'<td class="num">{fmt_prob(t.accept_prob)}</td><td class="num">{fmt_prob(t.uniform)}</td>'
            f"<td>{_verdict_badge(t.verdict)}</td><td class=\"top\">{top}</td></tr>"
        )
    note = (
        "Greedy decoding: a draft token is kept iff it is the target's most likely token (min(1,p/q) shows 1 or 0; no uniform draw)."
        if greedy
        else "A draft token is kept when the uniform draw u ≤ min(1, p/q); the first refusal ends the check."
    )
    return (
        '<div class="insp-section"><div class="insp-title">Proposal</div>'
        '<div class="insp-table-wrap"><table class="insp-table"><caption class="sr-only">Proposal of step '
        f'{step.index}: each drafted token with its drafter and target probabilities and the verdict</caption>'
        '<thead><tr><th>pos</th><th>token</th><th title="drafter probability">q (drafter)</th>'
        '<th title="target probability">p (target)</th><th>min(1, p/q)</th><th title="uniform draw">u</th><th>verdict</th>'
        '<th>target\'s top 3</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table></div>"
        f'<div class="muted small">{esc(note)}</div></div>'
    )


def _target_token_html(step: StepEvent) -> str:
    """The target's own token of the step (recovered, bonus or baseline) and the distribution it came from."""
    o = step.output
    emitted = o.kind in [n.kind for n in step.new_tokens]
    checked = [t for t in step.draft if t.verdict != "unchecked"]
    greedy_step = bool(checked) and all(t.uniform is None for t in checked)
    source = {
        "recovered": ("the target's distribution at the rejected position (greedy: its top token)" if greedy_step
                      else "the residual max(0, p − q), renormalised, at the rejected position"),
        "bonus": "the target's distribution after the fully accepted draft",
        "baseline": "the target's distribution",
    }.get(o.kind, "")
    return (
        '<div class="insp-section"><div class="insp-title">Target token</div>'
        f'<div>{_verdict_badge(o.kind)} <code>{esc(visible_text(o.text))}</code> with probability <b>{fmt_prob(o.prob)}</b>'
        f' <span class="muted">drawn from {esc(source)}</span>'
        + ("" if emitted else ' <span class="muted">(not appended: the run stopped before it)</span>')
        + "</div>"
        + _cand_bars(o.residual_top, o.token_id)
        + "</div>"
    )


def _timings_html(step: StepEvent) -> str:
    t = step.timings
    total = max(t.draft_s + t.verify_s + t.overhead_s, 1e-9)
    timing_text = f"time split: draft {fmt_ms(t.draft_s)}, verify {fmt_ms(t.verify_s)}, overhead {fmt_ms(t.overhead_s)}"
    seg = "".join(
        f'<span class="seg seg-{name}" style="width:{100 * v / total:.1f}%" title="{name} {fmt_ms(v)}"></span>'
        for name, v in (("draft", t.draft_s), ("verify", t.verify_s), ("overhead", t.overhead_s))
    )
    return (
        '<div class="insp-section"><div class="insp-title">Timings</div>'
        f'<div class="timing-bar" role="img" aria-label="{esc(timing_text)}">{seg}</div>'
        f'<div class="small"><span class="key key-draft"></span>draft {fmt_ms(t.draft_s)} · '
        f'<span class="key key-verify"></span>verify {fmt_ms(t.verify_s)} · '
        f'<span class="key key-overhead"></span>overhead {fmt_ms(t.overhead_s)} · {step.target_forwards} target forward pass'
        f'{"es" if step.target_forwards != 1 else ""}'
        + (" (includes the prompt prefill)" if step.target_forwards > 1 else "")
        + "</div></div>"
    )


# -- metrics strip ---------------------------------------------------------------------------------

METRIC_HELP = {
    "new_tokens": "tokens appended to the output",
    "steps": "draft-then-verify steps (each is one target verification pass)",
    "target_forwards": "target forward passes, including the prompt prefill",
    "drafted": "tokens the proposer drafted",
    "accepted": "drafted tokens the target kept",
    "acceptance_rate": "accepted ÷ drafted",
    "mean_acceptance_length": "tokens produced per target pass: 1 + accepted ÷ steps (1.0 = no gain)",
    "tokens_per_s": "new tokens ÷ engine wall time",
    "wall_s": "engine time from prefill to the last token (model loading excluded)",
}


def metrics_html(metrics: RunMetrics | None, running: bool = False, note: str | None = None) -> str:
    if metrics is None:
        cells = [(label, "—", key) for key, label in _METRIC_LABELS]
    else:
        m = metrics
        cells = [
            ("New tokens", str(m.new_tokens), "new_tokens"),
            ("Steps", str(m.steps), "steps"),
            ("Target passes", str(m.target_forwards), "target_forwards"),
            ("Drafted", str(m.drafted), "drafted"),
            ("Accepted", str(m.accepted), "accepted"),
            ("Acceptance rate", "—" if m.acceptance_rate is None else f"{m.acceptance_rate:.0%}", "acceptance_rate"),
            ("Mean accept. length", "—" if m.mean_acceptance_length is None else f"{m.mean_acceptance_length:.2f}", "mean_acceptance_length"),
            ("Tokens/s", "—" if m.tokens_per_s is None else f"{m.tokens_per_s:.1f}", "tokens_per_s"),
            ("Wall time", f"{m.wall_s:.2f} s", "wall_s"),
        ]
    html_cells = "".join(
        f'<div class="metric" title="{esc(METRIC_HELP[key])}"><div class="metric-value">{esc(value)}</div>'
        f'<div class="metric-label">{esc(label)}</div></div>'
        for label, value, key in cells
    )
    badge = '<div class="metric running-badge">running…</div>' if running else ""
    extra = f'<div class="metrics-note">{esc(note)}</div>' if note else ""
    return f'<div class="metrics-strip">{html_cells}{badge}</div>{extra}'


_METRIC_LABELS = [
    ("new_tokens", "New tokens"), ("steps", "Steps"), ("target_forwards", "Target passes"), ("drafted", "Drafted"),
    ("accepted", "Accepted"), ("acceptance_rate", "Acceptance rate"), ("mean_acceptance_length", "Mean accept. length"),
    ("tokens_per_s", "Tokens/s"), ("wall_s", "Wall time"),
]


# -- status line --------------------------------------------------------------------------------

def status_html(message: str, kind: str = "info") -> str:
    """A one-line status: kind is info | running | ok | error. The message is escaped."""
    icon = {"info": "ℹ", "ok": "✓", "error": "⚠"}.get(kind, "ℹ")
    icon_html = '<span class="spinner" aria-hidden="true"></span>' if kind == "running" else f'<span class="status-icon">{icon}</span>'
    role = ' role="alert"' if kind == "error" else ' role="status"'
    return f'<div class="status status-{esc(kind)}"{role}>{icon_html} {esc(message)}</div>'


def excerpt(text: str | None, limit: int = 60) -> str:
    """Plain-text excerpt (not HTML): one line, cut at `limit` characters."""
    one_line = " ".join((text or "").split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"
