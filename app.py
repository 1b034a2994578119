"""Hugging Face Spaces entry point: `python app.py` serves the SpecViz explorer.

Gradio reads GRADIO_SERVER_NAME / GRADIO_SERVER_PORT itself (Spaces sets them); the run log goes
to the default RunStore path ($SPECVIZ_DB, else the XDG data folder). SPECVIZ_PUBLIC=1 serves the
public-Space limits (specviz.limits.RunLimits.public_space: the embedded target and the project's own
drafters only, shorter runs, prompts and documents), said in the page and enforced for every run; on a
Hugging Face Space (SPACE_ID set) they are the default, and SPECVIZ_PUBLIC=0 lifts them.
"""

import os

from engine import ModelCache
from specviz.limits import RunLimits
from specviz.store import RunStore
from specviz.ui import build_app, launch_app

limits = RunLimits.from_env(os.environ)
demo = build_app(ModelCache(max_models=2), RunStore(), limits)

if __name__ == "__main__":
    launch_app(demo, max_file_size=limits.max_document_bytes)  # an upload over the limit is refused on arrival
