"""Use case: prepare the reference photos (the manual's prepare_dataset.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ai_influencer.imaging import list_images
from ai_influencer.options.prepare import PREPARE_DEFAULTS, PrepareOptions
from ai_influencer.qc.analysis import EngineSpec
from ai_influencer.settings import Settings
from ai_influencer.vision.prepare import PrepareItem, inspect_reference, prepare_references

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
    options: PrepareOptions = PREPARE_DEFAULTS,
    *,
    overwrite: bool = False,
) -> PrepareOutcome:
    """EXIF fix, optional background removal, face-centred crop; at least two usable references.

    ``options``: the stage's (``options.prepare``). Photos that cannot be used (no decode, no face, several
    faces unless ``allow_multi_face``) are reported (``errors``) and the rest go on; too few usable ones raise
    ``NotEnoughReferencesError`` naming the folder.
    """
    remover = None
    if options.do_rembg:
        from ai_influencer.vision.background import BackgroundRemover

        remover = BackgroundRemover(settings.rembg_model, settings.rembg_home, settings.onnx_providers)
    engine = EngineSpec.from_settings(settings, options.backend).build() if options.do_facecrop else None
    items = prepare_references(
        src, dst, engine=engine, remover=remover, do_facecrop=options.do_facecrop, out_size=options.size,
        overwrite=overwrite, allow_multi_face=options.allow_multi_face,
    )  # fmt: skip
    outcome = PrepareOutcome(items)
    if outcome.usable < MIN_REFERENCES:
        raise NotEnoughReferencesError(
            f"at least {MIN_REFERENCES} usable reference photos of the persona are needed in {src}, "
            f"found {outcome.usable}" + (f" ({'; '.join(outcome.errors)})" if outcome.errors else "")
        )
    return outcome


def check_references(
    settings: Settings,
    src: Path,
    *,
    allow_multi_face: bool = PREPARE_DEFAULTS.allow_multi_face,
    backend: str | None = None,
) -> PrepareOutcome:
    """Which photos ``prepare`` will use, without writing anything: each decoded, its faces counted.

    What ``influencer run`` checks before it starts (a few seconds) and ``doctor`` reports; the
    rule is ``prepare``'s own (``vision.prepare.the_face``). ``usable`` < 2 means prepare would fail.
    """
    photos = list_images(src) if src.is_dir() else []
    if not photos:
        return PrepareOutcome([])
    engine = EngineSpec.from_settings(settings, backend).build()
    return PrepareOutcome([inspect_reference(p, engine, allow_multi_face=allow_multi_face) for p in photos])
