"""The one computation the dashboard does ('Try it'): detoxify one image with a registered purifier and
classify it with a registered victim, before and after. No Streamlit here, so it is testable on its own.

Models come from the MLflow registry as the files their version points at; inside them we look for a folder
that the core library's own loaders accept (``detoxops.models.load_classifier``,
``detoxops.diffusion.load_purifier``: safetensors + JSON config). Nothing is unpickled.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_UPLOAD_PIXELS = 4096 * 4096


@dataclass
class TryResult:
    original: np.ndarray      # uint8 (H, W, 3) what the victim saw without defense
    detoxified: np.ndarray    # uint8 (H, W, 3)
    trigger_map: np.ndarray | None  # float (H, W) in [0, 1]
    pred_before: int
    pred_after: int
    seconds: float


def read_image(data: bytes, size: int | None) -> np.ndarray:
    """Uploaded bytes → uint8 (H, W, 3) RGB, resized to ``size`` × ``size`` when given (bilinear)."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_UPLOAD_PIXELS:
            raise ValueError(f"image is {image.width}x{image.height}; at most {MAX_UPLOAD_PIXELS} pixels are accepted")
        image = image.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError("the uploaded file is not an image PIL can read (use PNG or JPEG)") from None
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _candidate_dirs(root: Path, hints: tuple[str, ...]) -> list[Path]:
    """``root`` and every folder below it holding a ``.safetensors`` file: folders named like ``hints`` first
    (the guard model holds ``artifacts/classifier`` and ``artifacts/purifier``), then shallowest first."""
    dirs = {p.parent for p in root.rglob("*.safetensors")}

    def order(p: Path) -> tuple[int, int, str]:
        named = any(h in part.lower() for part in p.relative_to(root).parts for h in hints)
        return (0 if named else 1, len(p.parts), str(p))

    return sorted({root, *dirs}, key=order)


def _load_first(root: Path, loader: Callable, what: str, hints: tuple[str, ...]):
    errors = []
    for folder in _candidate_dirs(root, hints):
        try:
            return loader(folder)
        except Exception as exc:  # a wrong folder raises whatever the loader raises; try the next one
            errors.append(f"{folder}: {type(exc).__name__}: {exc}")
    raise ValueError(f"no {what} found in {root}; tried " + "; ".join(errors[:4]))


def _module_of(loaded):
    import torch

    if isinstance(loaded, torch.nn.Module):
        return loaded
    for item in loaded if isinstance(loaded, tuple | list) else (getattr(loaded, "model", None),):
        if isinstance(item, torch.nn.Module):
            return item
    raise ValueError(f"the classifier loader returned {type(loaded).__name__}, not a torch module")


def load_victim(folder: Path):
    from detoxops.models import load_classifier

    return _load_first(Path(folder), lambda f: _module_of(load_classifier(f)), "classifier",
                       ("classifier", "victim", "model"))


def load_purifier(folder: Path):
    from detoxops.diffusion import load_purifier as core_load_purifier

    return _load_first(Path(folder), core_load_purifier, "purifier", ("purifier", "unet", "diffusion"))


def input_size(purifier) -> int | None:
    """Image side the purifier was trained on (``Purifier.image_size``: its UNet's ``sample_size``)."""
    size = getattr(purifier, "image_size", None)
    return int(size) if isinstance(size, int) else None


def sampdetox_config():
    """The platform's SampDetox settings (``params.yaml`` section ``sampdetox``), or the defaults when the file
    is missing or invalid."""
    from dashboards.settings import params_path
    from detoxops.config import SampDetoxConfig, load_params

    try:
        return load_params(params_path()).sampdetox
    except Exception:  # the dashboard shows the params error in its sidebar; detox with the defaults meanwhile
        return SampDetoxConfig()


def detoxify_one(image_u8: np.ndarray, victim, purifier, cfg=None) -> TryResult:
    """SampDetox (``cfg``: a :class:`SampDetoxConfig`, default profile) on one image; victim labels before/after."""
    import time

    import torch

    from detoxops.config import SampDetoxConfig
    from detoxops.data import from_tensor, to_tensor
    from detoxops.defenses.guard import Detoxifier
    from detoxops.defenses.sampdetox import SampDetox

    if image_u8.dtype != np.uint8 or image_u8.ndim != 3 or image_u8.shape[-1] != 3:
        raise ValueError(f"expected one uint8 (H, W, 3) image, got {image_u8.dtype} {image_u8.shape}")
    batch = image_u8[None]
    started = time.perf_counter()
    with torch.no_grad():
        # the victim as a black box: only the patch repair's label confirmation (sampdetox.patch.confirm) queries it
        out = SampDetox(purifier, cfg or SampDetoxConfig(), classifier=victim)(to_tensor(batch))
    detoxified = from_tensor(out.images.cpu())
    classify = Detoxifier(victim, batch_size=1)  # no defense: the victim on exactly these pixels
    trigger_map = out.trigger_map[0, 0].float().cpu().numpy() if out.trigger_map is not None else None
    return TryResult(
        original=image_u8,
        detoxified=detoxified[0],
        trigger_map=trigger_map,
        pred_before=int(classify.predict(batch)[0]),
        pred_after=int(classify.predict(detoxified)[0]),
        seconds=time.perf_counter() - started,
    )
