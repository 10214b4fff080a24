"""Render the settings tagged ``ui=<group>`` in ``configs.settings`` as Gradio inputs.

A setting is declared once (type, bounds, default, description) and the widget follows from it: a bool is a
checkbox, a ``Literal`` a dropdown, a bounded number a slider, an unbounded one a number box.
"""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import gradio as gr
from pydantic.fields import FieldInfo

from configs.settings import Settings
from ui.i18n import has, t


def _bounds(field: FieldInfo) -> tuple[float | None, float | None]:
    lo = hi = None
    for m in field.metadata:
        if isinstance(m, annotated_types.Ge):
            lo = m.ge
        elif isinstance(m, annotated_types.Gt):
            lo = m.gt
        elif isinstance(m, annotated_types.Le):
            hi = m.le
        elif isinstance(m, annotated_types.Lt):
            hi = m.lt
    return lo, hi


def _base_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``: optional settings render like their value type."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def field_component(name: str, field: FieldInfo, value: Any) -> gr.components.Component:
    """One input for one declared setting, starting at the live value."""
    label = t(f"set_{name}") if has(f"set_{name}") else name.replace("_", " ")
    info = t(f"set_{name}_info") if has(f"set_{name}_info") else field.description
    kind = _base_type(field.annotation)
    common: dict[str, Any] = {"label": label, "info": info, "elem_id": f"setting-{name}"}
    if kind is bool:
        return gr.Checkbox(value=bool(value), **common)
    if get_origin(kind) is Literal:
        return gr.Dropdown(choices=list(get_args(kind)), value=value, **common)
    if kind in (int, float):
        lo, hi = _bounds(field)
        if lo is not None and hi is not None:
            step = 1 if kind is int else round((hi - lo) / 100, 4)
            return gr.Slider(minimum=lo, maximum=hi, step=step, value=value, **common)
        return gr.Number(value=value, minimum=lo, maximum=hi, precision=0 if kind is int else None, **common)
    return gr.Textbox(value="" if value is None else str(value), **common)


def render_group(settings: Settings, group: str) -> dict[str, gr.components.Component]:
    """Inputs for every setting of ``group``, in declaration order, inside the current layout block."""
    return {name: field_component(name, f, getattr(settings, name)) for name, f in Settings.ui_fields(group).items()}


def coerce(settings: Settings, name: str, value: Any) -> Any:
    """A widget value back into the setting's type (sliders send floats; a cleared number box sends None)."""
    if value is None or value == "":
        return getattr(settings, name)
    kind = _base_type(Settings.model_fields[name].annotation)
    if kind is int:
        return round(float(value))
    if kind is float:
        return float(value)
    if kind is bool:
        return bool(value)
    return value
