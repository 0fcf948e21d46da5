"""Use case: prepare the reference photos (the manual's prepare_dataset.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ai_influencer.settings import Settings
from ai_influencer.vision.prepare import PrepareItem, prepare_references
from ai_influencer.vision.qc import EngineSpec

MIN_REFERENCES = 2


class NotEnoughReferencesError(ValueError):
    """Fewer than two usable reference photos: identity QC would have nothing to compare against."""


@dataclass
class PrepareOutcome:
    items: list[PrepareItem]

    @property
    def usable(self) -> int:
        return sum(i.status in ("ok", "skipped") for i in self.items)

    @property
    def errors(self) -> list[str]:
        return [f"{i.source.name}: {i.reason}" for i in self.items if i.status == "error"]


def prepare(
    settings: Settings,
    src: Path,
    dst: Path,
    *,
    do_rembg: bool = False,
    do_facecrop: bool = True,
    size: int = 1024,
    overwrite: bool = False,
    backend: str | None = None,
) -> PrepareOutcome:
    """EXIF fix, optional background removal, face-centred crop; at least two usable references.

    Photos that cannot be used are reported (``errors``) and the rest go on; too few usable ones
    raise ``NotEnoughReferencesError`` naming the folder.
    """
    remover = None
    if do_rembg:
        from ai_influencer.vision.background import BackgroundRemover

        remover = BackgroundRemover(settings.rembg_model, settings.rembg_home, settings.onnx_providers)
    engine = EngineSpec.from_settings(settings, backend).build() if do_facecrop else None
    items = prepare_references(
        src, dst, engine=engine, remover=remover, do_facecrop=do_facecrop, out_size=size, overwrite=overwrite
    )
    outcome = PrepareOutcome(items)
    if outcome.usable < MIN_REFERENCES:
        raise NotEnoughReferencesError(
            f"at least {MIN_REFERENCES} usable reference photos of the persona are needed in {src}, "
            f"found {outcome.usable}" + (f" ({'; '.join(outcome.errors)})" if outcome.errors else "")
        )
    return outcome
