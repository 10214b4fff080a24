"""Gradio web UI (see ui.web.build_ui)."""
