"""The one workspace layout (the folder names users know from the manual).

Every stage takes its paths from a ``Workspace`` so that defaults live in one
place; each path is still overridable per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    data_root: Path = Path("data")
    models_root: Path = Path("models")

    @property
    def input_raw(self) -> Path:
        return self.data_root / "input_raw"

    @property
    def cleaned(self) -> Path:
        return self.data_root / "cleaned"

    @property
    def text(self) -> Path:
        return self.data_root / "text"

    @property
    def storyboard(self) -> Path:
        return self.text / "storyboard.json"

    @property
    def synth(self) -> Path:
        return self.data_root / "synth_openrouter"

    @property
    def qc_passed(self) -> Path:
        return self.data_root / "qc_passed"

    @property
    def augment(self) -> Path:
        return self.data_root / "augment"

    @property
    def captions(self) -> Path:
        return self.data_root / "captions"

    @property
    def lora_dir(self) -> Path:
        return self.models_root / "lora"

    @property
    def lora_file(self) -> Path:
        return self.lora_dir / "influencer_lora.safetensors"

    @property
    def base_model(self) -> Path:
        return self.models_root / "base" / "sdxl.safetensors"

    @classmethod
    def from_settings(cls, settings: object) -> Workspace:
        return cls(Path(settings.data_root), Path(settings.models_root))  # type: ignore[attr-defined]
