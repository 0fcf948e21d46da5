"""Background removal with rembg (manual step 1, ``--do_rembg``).

One rembg session is created per ``BackgroundRemover`` and reused for every
image: creating a session costs seconds, the inference itself far less.
Models are looked up in a configurable directory (``INFLUENCER_REMBG_HOME``,
exported to rembg as ``U2NET_HOME``) and never downloaded implicitly: a
missing file is an error that says where to put it. ``model`` is a rembg model
name (``u2net_human_seg`` default, ``birefnet-portrait``; note that rembg's own
default ``bria-rmbg`` needs a paid licence for commercial use) or a path to any
U^2-Net-compatible ``.onnx`` file (rembg's ``u2net_custom`` session).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image

RELEASES = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/"


class BackgroundModelMissingError(RuntimeError):
    pass


def resolve_model(model: str, home: Path) -> tuple[str, Path]:
    """(rembg session name, model file) for a model name or an .onnx path; raises if absent."""
    home = Path(home)
    if model.endswith(".onnx"):
        path = Path(model)
        if not path.is_absolute() and not path.is_file():
            path = home / model
        if not path.is_file():
            raise BackgroundModelMissingError(f"rembg model file {path} not found")
        return "u2net_custom", path.resolve()
    candidates = [home / "models" / model / f"{model}.onnx", home / f"{model}.onnx"]
    for c in candidates:
        if c.is_file():
            return model, c.resolve()
    raise BackgroundModelMissingError(
        f"rembg model {model!r} not found: put {model}.onnx at {candidates[1]} "
        f"(download: {RELEASES}{model}.onnx), or set INFLUENCER_REMBG_MODEL to another model or an .onnx path"
    )


class BackgroundRemover:
    def __init__(self, model: str, home: Path, providers: list[str] | None = None) -> None:
        self.session_name, self.model_path = resolve_model(model, home)
        self.providers = providers or ["CPUExecutionProvider"]
        self._session = None
        self._lock = threading.Lock()

    def _get_session(self):
        with self._lock:
            if self._session is None:
                from rembg import new_session

                # rembg reads its model root from the environment only; point it at the folder that
                # holds our file so it is found (and accepted for u2net_custom) without any download.
                os.environ["U2NET_HOME"] = str(self.model_path.parent)
                kwargs = {"model_path": str(self.model_path)} if self.session_name == "u2net_custom" else {}
                self._session = new_session(self.session_name, providers=self.providers, **kwargs)
            return self._session

    def mask(self, rgb: np.ndarray) -> np.ndarray:
        """Foreground probability mask, HxW uint8."""
        from rembg import remove

        out = remove(Image.fromarray(rgb), session=self._get_session(), only_mask=True)
        return np.asarray(out.convert("L"))

    def remove(self, rgb: np.ndarray, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
        """The image with its background replaced by a flat colour."""
        alpha = self.mask(rgb).astype(np.float32)[..., None] / 255.0
        bg = np.empty_like(rgb, dtype=np.float32)
        bg[...] = background
        return (rgb.astype(np.float32) * alpha + bg * (1.0 - alpha)).round().astype(np.uint8)
