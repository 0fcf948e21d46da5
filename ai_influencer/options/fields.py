"""Reading an options model's fields: one default, bound and help text per option, for every interface.

The CLI (``interfaces.cli.base.option``), the GUI (Tk spinboxes and entries), the hub (``GET /api/options``)
and the Prefect parameter models (which subclass the options models) all read a field from here, so that no
interface writes a default or a bound of its own (``tests/test_contracts.py`` fails when one does).
"""

from __future__ import annotations

import copy
from typing import Any

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ai_influencer.settings import Settings


def field_of(model: type[BaseModel], name: str) -> FieldInfo:
    """A copy of ``model``'s field, to declare the same option on another model (default, bounds and help)."""
    return copy.deepcopy(model.model_fields[name])


def default_of(model: type[BaseModel], name: str) -> Any:
    info = model.model_fields[name]
    return info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]


def help_of(model: type[BaseModel], name: str) -> str:
    return model.model_fields[name].description or ""


def bounds_of(model: type[BaseModel], name: str) -> tuple[float | None, float | None]:
    """The field's (lowest, highest) allowed value; a strict bound (gt/lt) is given as the value it excludes."""
    low = high = None
    for m in model.model_fields[name].metadata:
        if isinstance(m, at.Ge | at.Gt):
            low = m.ge if isinstance(m, at.Ge) else m.gt
        elif isinstance(m, at.Le | at.Lt):
            high = m.le if isinstance(m, at.Le) else m.lt
        elif isinstance(m, at.Interval):
            low = m.ge if m.ge is not None else m.gt
            high = m.le if m.le is not None else m.lt
    return low, high  # type: ignore[return-value]


def form(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """The model's options as a form shows them: default, bounds, help (the hub's ``/api/options``)."""
    out: dict[str, dict[str, Any]] = {}
    for name in model.model_fields:
        low, high = bounds_of(model, name)
        value = default_of(model, name)
        entry: dict[str, Any] = {"default": value.model_dump() if isinstance(value, BaseModel) else value}
        if low is not None:
            entry["minimum"] = low
        if high is not None:
            entry["maximum"] = high
        entry["help"] = help_of(model, name)
        out[name] = entry
    return out


def setting_default(name: str) -> Any:
    """A setting's built-in default (code, not environment), for help texts."""
    return Settings.model_fields[name].default


def from_settings(name: str, what: str) -> str:
    """Help text of an option that is empty by default and then filled from a setting when a run starts."""
    return f"{what}; empty: the setting {name} (default {setting_default(name)})."


BACKEND_HELP = from_settings(
    "face_backend",
    "dlib | insightface (buffalo_l models: NON-COMMERCIAL licence; only when chosen); auto = dlib",
)
