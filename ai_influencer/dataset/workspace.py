"""The one workspace layout (the folder names users know from the manual).

Every stage, the CLI, the flows, the hub and the GUI take their paths from a
``Workspace`` so that a folder or file name is spelled in exactly one place;
each path is still overridable per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ai_influencer.dataset.manifest import MANIFEST_NAME

REPORT_NAME = "qc_report.csv"  # QC's report, next to the images it approved

LORA_NAME = "influencer_lora"
KOHYA_SUBDIR = "kohya"  # augment's kohya layout: augment/kohya/<repeats>_<token> <class>/


@dataclass(frozen=True)
class Workspace:
    data_root: Path = Path("data")
    models_root: Path = Path("models")

    # ---- data/ ---------------------------------------------------------------------------------
    @property
    def input_raw(self) -> Path:
        """The user's reference photos (>= 2 of the persona)."""
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
    def adjusted_bank(self) -> Path:
        """The down-weighted prompt bank that generate-until-N writes between rounds."""
        return self.text / "prompt_bank.adjusted.yaml"

    @property
    def synth(self) -> Path:
        return self.data_root / "synth_openrouter"

    @property
    def manifest(self) -> Path:
        return self.synth / MANIFEST_NAME

    @property
    def qc_passed(self) -> Path:
        return self.data_root / "qc_passed"

    @property
    def qc_report(self) -> Path:
        return self.qc_passed / REPORT_NAME

    @property
    def qc_cache(self) -> Path:
        """QC's per-image analyses by content (``qc.pool``): no image is checked twice."""
        return self.data_root / ".cache" / "qc"

    @property
    def qc_overrides(self) -> Path:
        """The user's verdicts on QC's images, by content hash (``review.overrides``): the user's work, not a
        cache, so it sits beside the folders rather than under ``.cache/``."""
        return self.data_root / "qc_overrides.json"

    @property
    def persona_settings(self) -> Path:
        """This persona's learned settings (``review.persona``): the calibrated ``minsim`` / ``minblur``."""
        return self.data_root / "persona.json"

    @property
    def augment(self) -> Path:
        return self.data_root / "augment"

    @property
    def kohya_dataset(self) -> Path:
        """augment's kohya layout (``<repeats>_<token> <class>/``), what training reads by default."""
        return self.augment / KOHYA_SUBDIR

    @property
    def training_set(self) -> Path:
        """The kohya layout when augment wrote one, else the flat augment folder."""
        return self.kohya_dataset if self.kohya_dataset.is_dir() else self.augment

    @property
    def captions(self) -> Path:
        return self.data_root / "captions"

    @property
    def samples(self) -> Path:
        return self.data_root / "samples"

    @property
    def video(self) -> Path:
        """Persona clips (``video.ledger.VideoStore``): <key>.mp4 + <key>.json, jobs/, filmstrips/, webhooks/."""
        return self.data_root / "video"

    # ---- models/ -------------------------------------------------------------------------------
    @property
    def lora_dir(self) -> Path:
        return self.models_root / "lora"

    @property
    def lora_file(self) -> Path:
        return self.lora_dir / f"{LORA_NAME}.safetensors"

    @property
    def evaluation(self) -> Path:
        return self.lora_dir / "evaluation"

    @property
    def identity_history(self) -> Path:
        return self.lora_dir / "identity_history.sqlite"

    @property
    def base_model(self) -> Path:
        return self.models_root / "base" / "sdxl.safetensors"

    def folders(self) -> list[Path]:
        """The folders ``influencer init`` creates."""
        return [self.input_raw, self.cleaned, self.text, self.synth, self.qc_passed, self.augment, self.captions,
                self.lora_dir, self.base_model.parent]  # fmt: skip

    @classmethod
    def from_settings(cls, settings: object) -> Workspace:
        return cls(Path(settings.data_root), Path(settings.models_root))  # type: ignore[attr-defined]


INPUT_README = """Put the reference photos of your persona here: at least 2 (better 4-10), JPEG/PNG/WEBP,
one face per photo, sharp, different angles and light. `influencer prepare` (or `influencer run`)
crops them around the face into data/cleaned/.
"""


def scaffold(ws: Workspace, prompt_bank: Path, env_file: Path, persona: dict[str, str] | None = None) -> list[Path]:
    """Create a workspace: its folders, a prompt bank to edit (with ``persona``'s name, class_word and
    description when given) and a commented ``.env``; returns what it created (anything already there
    is left as it is)."""
    from ai_influencer.io import atomic_write_text
    from ai_influencer.prompt_bank import prompt_bank_template
    from ai_influencer.settings import env_template

    created: list[Path] = []
    for folder in ws.folders():
        if not folder.is_dir():
            folder.mkdir(parents=True)
            created.append(folder)
    readme = ws.input_raw / "README.txt"
    templates = {
        readme: INPUT_README,
        prompt_bank: prompt_bank_template(**(persona or {})),
        env_file: env_template(),
    }
    for path, text in templates.items():
        if not path.exists():
            atomic_write_text(path, text)
            created.append(path)
    return created
