"""This persona's learned settings (``data/persona.json``) and which QC thresholds apply.

Why a workspace file and not the prompt bank: a bank is hand-written and often shared between personas; the
thresholds are measured on this workspace's references and this user's labels, and belong with them.

Precedence (docs/review.md), printed by the CLI so the user sees which applied: a threshold given
explicitly (``--minsim``, ``--minblur``, a flow parameter the user set) > this persona's calibration >
the built-in default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from ai_influencer.dataset.workspace import Workspace
from ai_influencer.io import atomic_write_json
from ai_influencer.options.qc import QC_DEFAULTS
from ai_influencer.qc.decision import QCThresholds

PERSONA_VERSION = 1
THRESHOLDS = ("minsim", "minblur")
DEFAULTS: dict[str, float] = {name: getattr(QC_DEFAULTS, name) for name in THRESHOLDS}


class PersonaSettingsError(ValueError):
    """An unreadable or invalid persona file, as one line naming it."""


def read_persona(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise PersonaSettingsError(f"{path}: unreadable persona settings ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("qc", {}), dict):
        raise PersonaSettingsError(f"{path}: persona settings must be an object with a 'qc' object")
    qc = data.get("qc", {})
    for name in THRESHOLDS:
        if name in qc:
            try:
                QCThresholds(**{name: qc[name]})  # checked when made
            except (ValueError, TypeError) as exc:
                raise PersonaSettingsError(f"{path}: qc.{name}: {exc}") from None
    return data


@dataclass(frozen=True)
class Threshold:
    name: str
    value: float
    source: str  # flag | persona | default
    detail: str = ""

    def describe(self) -> str:
        label = {"flag": "given", "persona": "persona calibration", "default": "built-in default"}[self.source]
        return f"{self.name} {self.value:g} ({label}{', ' + self.detail if self.detail else ''})"


@dataclass(frozen=True)
class EffectiveThresholds:
    minsim: Threshold
    minblur: Threshold

    def values(self) -> dict[str, float]:
        return {"minsim": self.minsim.value, "minblur": self.minblur.value}

    def describe(self) -> str:
        return f"{self.minsim.describe()}; {self.minblur.describe()}"


def effective_thresholds(ws: Workspace, explicit: Mapping[str, float | None] | None = None) -> EffectiveThresholds:
    """``minsim`` and ``minblur`` for a QC run: explicit (not None) > the persona's calibration > the default.

    The persona file is read only when a threshold is left to it, so an explicit run never fails on it.
    """
    explicit = explicit or {}
    unknown = set(explicit) - set(THRESHOLDS)
    if unknown:
        raise ValueError(f"unknown threshold(s): {', '.join(sorted(unknown))}")
    persona: dict[str, Any] | None = None
    chosen: dict[str, Threshold] = {}
    for name in THRESHOLDS:
        given = explicit.get(name)
        if given is not None:
            chosen[name] = Threshold(name, float(given), "flag")
            continue
        if persona is None:
            persona = read_persona(ws.persona_settings).get("qc", {})
        if name in persona:
            when = persona.get("calibrated_at", "")
            detail = f"{ws.persona_settings}" + (f", {when}" if when else "")
            chosen[name] = Threshold(name, float(persona[name]), "persona", detail)
        else:
            chosen[name] = Threshold(name, DEFAULTS[name], "default")
    return EffectiveThresholds(chosen["minsim"], chosen["minblur"])


def store_thresholds(ws: Workspace, values: Mapping[str, float], record: Mapping[str, Any]) -> Path:
    """Store calibrated thresholds in the persona file (other sections and thresholds kept), atomically."""
    for name, value in values.items():
        if name not in THRESHOLDS:
            raise ValueError(f"unknown threshold {name!r}")
        QCThresholds(**{name: value})  # checked when made
    path = ws.persona_settings
    with FileLock(str(path.with_name(f".{path.name}.lock")), timeout=30):
        data = read_persona(path)
        qc = dict(data.get("qc", {}))
        qc.update({k: float(v) for k, v in values.items()})
        qc.update(record)
        data.update({"version": PERSONA_VERSION, "qc": qc})
        return atomic_write_json(path, data)
