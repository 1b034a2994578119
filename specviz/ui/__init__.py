"""The in-browser explorer (Gradio 6): `build_app(models, store)` and `launch_app(demo, ...)`."""

from .app import build_app, launch_app, launch_local, load_css, make_theme

__all__ = ["build_app", "launch_app", "launch_local", "load_css", "make_theme"]
