"""Hugging Face Spaces entry point: `python app.py` serves the SpecViz explorer.

Gradio reads GRADIO_SERVER_NAME / GRADIO_SERVER_PORT itself (Spaces sets them); the run log goes
to the default RunStore path ($SPECVIZ_DB, else the XDG data folder).
"""

from engine import ModelCache
from specviz.store import RunStore
from specviz.ui import build_app, launch_app

demo = build_app(ModelCache(max_models=2), RunStore())

if __name__ == "__main__":
    launch_app(demo)
