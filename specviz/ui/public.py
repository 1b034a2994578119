"""The page's side of `specviz.limits.RunLimits`: a note saying what a public demo limits and why, and the
widgets narrowed to match (the max-new-tokens sliders, the target boxes). The document boxes keep no length
cap of their own: a browser cuts a pasted text at a textarea's maxlength without a word, while the runner refuses
an oversize document with a message.

The widgets only help the person: the limits are enforced server-side by the `Runner` for every run, page
or API. `apply_public_limits(demo, limits)` is called by `build_app` inside the open `gr.Blocks`, after the
tabs are built (the page's config is made when the Blocks closes); with ordinary limits it does nothing.
"""

from __future__ import annotations

import gradio as gr

from specviz.limits import RunLimits

MAX_NEW_TOKENS_LABEL = "max new tokens"  # controls.build_max_new_tokens
TARGET_LABEL = "target model"  # the Playground's and Compare's target boxes
LAB_SAMPLES_LABEL = "samples (N)"  # the Sampling lab's sample count


def limits_note(limits: RunLimits) -> gr.Markdown | None:
    """The public demo's limits, in the page (None, nothing added, with ordinary limits)."""
    if not limits.public:
        return None
    return gr.Markdown(limits.describe(), elem_id="public-limits", elem_classes=["explain", "public-limits"])


def apply_public_limits(demo: gr.Blocks, limits: RunLimits) -> None:
    """Narrow the built widgets to the limits: sliders capped, target boxes fixed to the one allowed target."""
    if not limits.public:
        return
    for block in list(demo.blocks.values()):
        label = getattr(block, "label", None)
        if isinstance(block, gr.Slider) and label == MAX_NEW_TOKENS_LABEL:
            block.maximum = min(block.maximum, limits.max_new_tokens)
            if isinstance(block.value, (int, float)):
                block.value = min(block.value, limits.max_new_tokens)
            block.info = f"at most {limits.max_new_tokens:,} in this public demo"
        elif isinstance(block, gr.Slider) and label == LAB_SAMPLES_LABEL:
            block.maximum = min(block.maximum, limits.max_lab_samples)
            if isinstance(block.value, (int, float)):
                block.value = min(block.value, limits.max_lab_samples)
        elif isinstance(block, gr.Textbox) and label == TARGET_LABEL and limits.targets:
            block.value = limits.targets[0]
            block.interactive = len(limits.targets) > 1
            block.info = f"this public demo runs {', '.join(limits.targets)} only"
