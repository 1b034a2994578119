"""Workshop mode: a dark / light toggle, a projector mode, keyboard stepping and accessible names.

Everything here runs in the browser; Python only ships it:

- `HEAD`: a script for `launch(head=...)` (Gradio 6 takes `head` in launch(); `specviz.ui.app.launch_app` adds it,
  so every entry point gets it: `python app.py`, `specviz.ui.launch_app`, `launch_local` in tests).
- `build_toolbar()`: the small toolbar at the top of the page (Dark mode, Projector, a keyboard hint).

Theme: the toggle switches the `dark` class on `document.body`, as Gradio does for `?__theme=dark`; the choice is
kept in localStorage (`specviz-theme`) and re-applied when Gradio's own theme code sets the class at start-up. A
`?__theme=` in the URL wins over the stored choice at load. The plots follow through CSS (assets/style.css: the
figures have transparent backgrounds, `.dark` recolours their axes, titles, legends and grids).

Projector: the `projector` class on `document.body` (kept in localStorage, `specviz-projector`): larger text,
token stream, tables and plot text, and wider content (assets/style.css).

Keyboard: ← / → click the step-previous / step-next button of the run view in the visible tab, space its play /
pause button; never while typing (input, textarea, select, contenteditable) and never on a control that uses the
key itself (a focused button keeps its space, a tab list or slider its arrows). Focus is never moved or trapped.

Accessible names: symbol buttons and plot containers get aria-labels by elem_id (Gradio has no parameter for
them); the plots are `role="img"` with a sentence saying what they show.
"""

from __future__ import annotations

import json

import gradio as gr

THEME_KEY = "specviz-theme"
PROJECTOR_KEY = "specviz-projector"

# The run views (specviz.ui.panels.RunView) with step buttons: the Playground's and the History tab's
STEP_PREFIXES = ("", "history-")
STEP_BUTTONS = {"ArrowLeft": "step-prev", "ArrowRight": "step-next", " ": "step-play"}

# aria-labels by elem_id suffix (each prefixed view gets the same): buttons whose text is mostly symbols
BUTTON_LABELS = {
    "step-prev": "Previous step",
    "step-next": "Next step",
    "step-play": "Play or pause the step-by-step replay",
    "history-replay": "Replay the logged run step by step",
}
# Plot containers: role="img" and what the figure shows
PLOT_LABELS = {
    "acceptance-plot": "Acceptance history plot: tokens produced per step stacked by how they were born, a rolling "
                       "mean, acceptance by draft position and a histogram of acceptance lengths",
    "draft-length-plot": "Draft length plot: the length the policy chose per step, tokens drafted and accepted, the "
                         "hindsight oracle, and the theory curve of tokens per step against the acceptance rate",
    "phase-plot": "Phase timeline: when the drafter drafted and the target verified, per worker, in milliseconds",
    "draft-tree-plot": "Draft tree of the selected step: the accepted path, rejected and unchecked branches",
    "lattice-plot": "Token lattice of the selected diffusion step: candidates per position coloured by drafter "
                    "probability and the draft path through them",
    "multi-draft-plot": "Multi-draft acceptance bound plot",
}

KEY_HINT = "Keys: ← → step · space play"

_TOOLBAR = f"""
<div class="sv-toolbar" role="toolbar" aria-label="Display settings">
  <span class="sv-keys-hint" id="sv-keys-hint" title="Left / right arrow: previous / next step of the run shown.
Space: play or pause. Inactive while typing in a text box.">{KEY_HINT}</span>
  <button type="button" class="sv-tool" id="sv-theme-toggle" aria-pressed="false"
    title="Switch between light and dark (remembered in this browser)">◐ Dark mode</button>
  <button type="button" class="sv-tool" id="sv-projector-toggle" aria-pressed="false"
    title="Larger text and plots, wider page, for a projector (remembered in this browser)">▣ Projector</button>
</div>
"""

_SCRIPT = r"""
(() => {
  if (window.__specvizWorkshop) return;
  window.__specvizWorkshop = true;
  const CFG = __CONFIG__;
  const store = {
    get(k) { try { return window.localStorage.getItem(k); } catch (e) { return null; } },
    set(k, v) { try { window.localStorage.setItem(k, v); } catch (e) { /* private mode: not remembered */ } },
  };
  const pick = (v) => (v === "dark" ? true : v === "light" ? false : null);
  // The theme to keep: the URL's ?__theme= wins at load, then the stored choice; null leaves Gradio's (system) one
  const urlTheme = pick(new URLSearchParams(window.location.search).get("__theme"));
  let wantDark = urlTheme !== null ? urlTheme : pick(store.get(CFG.themeKey));
  let wantProjector = store.get(CFG.projectorKey) === "on";

  function syncButtons() {
    const b = document.body;
    if (!b) return;
    // only what changed: writing the same text again would be a mutation, and the observer would run forever
    const set = (el, name, value) => { if (el && el.getAttribute(name) !== value) el.setAttribute(name, value); };
    const t = document.getElementById("sv-theme-toggle");
    const dark = b.classList.contains("dark");
    set(t, "aria-pressed", String(dark));
    const text = dark ? "☀ Light mode" : "◐ Dark mode";
    if (t && t.textContent !== text) t.textContent = text;
    set(document.getElementById("sv-projector-toggle"), "aria-pressed", String(b.classList.contains("projector")));
  }
  function applyClasses() {
    const b = document.body;
    if (!b) return;
    if (wantDark !== null && b.classList.contains("dark") !== wantDark) b.classList.toggle("dark", wantDark);
    if (b.classList.contains("projector") !== wantProjector) {
      b.classList.toggle("projector", wantProjector);
      window.dispatchEvent(new Event("resize"));  // plotly re-lays its figures out at the new text size
    }
    syncButtons();
  }
  function toggleTheme() {
    wantDark = !document.body.classList.contains("dark");
    store.set(CFG.themeKey, wantDark ? "dark" : "light");
    applyClasses();
  }
  function toggleProjector() {
    wantProjector = !document.body.classList.contains("projector");
    store.set(CFG.projectorKey, wantProjector ? "on" : "off");
    applyClasses();
  }

  // accessible names Gradio has no parameter for, by elem_id (suffix: each run view's prefix)
  function label() {
    for (const [suffix, text] of Object.entries(CFG.buttonLabels)) {
      document.querySelectorAll(`[id$="${suffix}"]`).forEach((el) => {
        const button = el.tagName === "BUTTON" ? el : el.querySelector("button");
        if (button && button.getAttribute("aria-label") !== text) button.setAttribute("aria-label", text);
      });
    }
    for (const [suffix, text] of Object.entries(CFG.plotLabels)) {
      document.querySelectorAll(`[id$="${suffix}"]`).forEach((el) => {
        if (el.getAttribute("role") !== "img") el.setAttribute("role", "img");
        if (el.getAttribute("aria-label") !== text) el.setAttribute("aria-label", text);
      });
    }
  }
  let queued = false;
  function onMutation() {
    applyClasses();  // at once: Gradio's start-up theme code must not win over the stored choice, even for a frame
    if (queued) return;
    queued = true;  // labels: once per burst of re-renders (a timer, not a frame: hidden tabs get no frames)
    window.setTimeout(() => { queued = false; label(); }, 60);
  }

  // keyboard: step the run view of the visible tab
  const TYPING = "input, textarea, select, [contenteditable]:not([contenteditable='false'])";
  const OWNS_ARROWS = "[role=tab], [role=tablist], [role=slider], [role=listbox], [role=option], [role=menu], " +
                      "[role=menuitem], [role=radio], [role=radiogroup], [role=grid], [role=gridcell], [role=combobox]";
  const OWNS_SPACE = "button, a[href], summary, [role=button], [role=checkbox], [role=switch], [role=tab], " +
                     "[role=option], [role=menuitem], [role=radio], [role=link]";
  function visibleButton(suffix) {
    for (const prefix of CFG.prefixes) {
      const el = document.getElementById(prefix + suffix);
      if (el && el.offsetParent !== null) return el.tagName === "BUTTON" ? el : el.querySelector("button") || el;
    }
    return null;
  }
  function onKey(e) {
    const suffix = CFG.keys[e.key];
    if (!suffix || e.defaultPrevented || e.repeat && e.key === " " || e.altKey || e.ctrlKey || e.metaKey || e.shiftKey) return;
    const t = e.target instanceof Element ? e.target : null;
    if (t && (t.closest(TYPING) || t.isContentEditable)) return;
    if (t && t.closest(e.key === " " ? OWNS_SPACE : OWNS_ARROWS)) return;
    const button = visibleButton(suffix);
    if (!button || button.disabled) return;
    e.preventDefault();  // no page scroll on space; focus stays where it is
    button.click();
  }

  function start() {
    document.addEventListener("keydown", onKey);
    document.addEventListener("click", (e) => {
      const el = e.target instanceof Element ? e.target.closest("#sv-theme-toggle, #sv-projector-toggle") : null;
      if (!el) return;
      if (el.id === "sv-theme-toggle") toggleTheme(); else toggleProjector();
    });
    // Gradio sets the theme class at start-up and renders (and re-renders) components later: keep both in line
    new MutationObserver(onMutation).observe(document.body, {
      attributes: true, attributeFilter: ["class"], childList: true, subtree: true,
    });
    applyClasses();
    label();
  }
  if (document.body) start(); else document.addEventListener("DOMContentLoaded", start);
})();
"""


def _config() -> dict:
    return {"themeKey": THEME_KEY, "projectorKey": PROJECTOR_KEY, "prefixes": list(STEP_PREFIXES),
            "keys": STEP_BUTTONS, "buttonLabels": BUTTON_LABELS, "plotLabels": PLOT_LABELS}


HEAD = "<script>" + _SCRIPT.replace("__CONFIG__", json.dumps(_config(), ensure_ascii=False)) + "</script>"


def build_toolbar() -> gr.HTML:
    """The toolbar at the top of the page: Dark mode and Projector toggles, the keyboard hint (HEAD's script
    handles the clicks, by delegation, so a re-render never loses them)."""
    return gr.HTML(_TOOLBAR, elem_id="sv-toolbar-wrap", elem_classes=["sv-toolbar-wrap"], js_on_load=None)
