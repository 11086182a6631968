"""Which purifier an operation uses: the one rule every entry point follows."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from detoxops.config import DiffusionConfig, Params
from detoxops.data import ImageSet
from detoxops.fileio import atomic_dir

__all__ = ["PurifierOutcome", "PurifierSizeError", "choose_purifier", "dataelixir_diffusion", "dataelixir_purifier",
           "load_chosen_purifier", "prepare_purifier"]

ORIGIN_FILE = "origin.json"


class PurifierSizeError(ValueError):
    """The chosen purifier works on another image size than the data's."""

    def __init__(self, folder: Path, size: int, image_size: int) -> None:
        super().__init__(f"purifier {folder} was trained on {size}x{size} images but the data are "
                         f"{image_size}x{image_size}")
        self.folder, self.size, self.image_size = folder, size, image_size


def dataelixir_purifier(params: Params, image_size: int) -> str | None:
    """What DataElixir's purifier is set to: ``dataelixir.purifier``, else ``diffusion.purifier``, else the shipped
    purifier its profile was validated with when it is made for ``image_size`` (``cpu_cifar10``: ``cifar10-32-v2``),
    else ``None`` — the purifier shipped for the size, as for every other operation. SampDetox keeps
    ``diffusion.purifier``'s rule: its levels were chosen with ``cifar10-32`` (docs/diffusion.md)."""
    from detoxops.diffusion.unet import ALL_SHIPPED_PURIFIERS

    configured = params.dataelixir.purifier or params.diffusion.purifier
    if configured:
        return configured
    preferred = params.dataelixir.preferred_purifier(image_size)
    if preferred is not None and ALL_SHIPPED_PURIFIERS.get(preferred) == int(image_size):
        return preferred
    return None


def dataelixir_diffusion(params: Params, image_size: int) -> DiffusionConfig:
    """``params.diffusion`` with ``purifier`` set to :func:`dataelixir_purifier`: the config every DataElixir entry
    point (operations, flows, the ingestion check, ``diffusion prepare --for dataelixir``) chooses its purifier by."""
    return params.diffusion.model_copy(update={"purifier": dataelixir_purifier(params, image_size)})


def choose_purifier(explicit: str | Path | None, cfg: DiffusionConfig, image_size: int) -> tuple[Path, str]:
    """``(folder, origin)``: ``explicit`` (a ``--purifier`` folder or shipped name, a pipeline's
    ``pipeline/purifier``) when given, else ``diffusion.purifier`` (a folder or a shipped name), else the purifier
    shipped for ``image_size`` (:func:`detoxops.diffusion.purifier_folder`). Raises ``FileNotFoundError`` naming the
    setting when none exists (training one is its own operation: ``detoxops diffusion train``, the
    ``train_purifier`` stage) and ``ValueError`` when the purifier's image size is not the data's."""
    from detoxops.diffusion import purifier_folder
    from detoxops.diffusion.unet import ALL_SHIPPED_PURIFIERS, shipped_name

    if explicit is not None:
        folder, origin = Path(explicit), "explicit"
        if shipped_name(explicit) is not None:
            folder, origin = purifier_folder(str(explicit), image_size)  # a shipped name, e.g. cifar10-32-v2
        elif not folder.is_dir():
            raise FileNotFoundError(f"purifier {folder} is not a folder nor a shipped purifier's name "
                                    f"({', '.join(ALL_SHIPPED_PURIFIERS)})")
    else:
        folder, origin = purifier_folder(cfg.purifier, image_size)
        if folder is None:
            raise FileNotFoundError(
                f"no purifier for {image_size}x{image_size} images: set diffusion.purifier or pass --purifier "
                "(train one with `detoxops diffusion train`)")
    config = Path(folder) / "config.json"
    size = json.loads(config.read_text()).get("sample_size") if config.is_file() else None
    if size is not None and int(size) != int(image_size):
        raise PurifierSizeError(folder, int(size), int(image_size))
    return Path(folder), origin


def load_chosen_purifier(explicit: str | Path | None, cfg: DiffusionConfig, image_size: int, device="cpu"):
    """The :class:`~detoxops.diffusion.Purifier` of :func:`choose_purifier`, on ``device``, in ``cfg.precision``."""
    from detoxops.diffusion import load_purifier

    folder, _ = choose_purifier(explicit, cfg, image_size)
    return load_purifier(folder, device=device, precision=cfg.precision)


@dataclass(frozen=True)
class PurifierOutcome:
    """The purifier an operation uses: ``folder`` (a diffusers UNet folder, safetensors), where it came from
    (``configured``, ``shipped:<name>``, ``trained``) and the image size it works on."""

    folder: Path
    origin: str
    source: str
    image_size: int

    def record(self) -> dict[str, object]:
        """What ``origin.json`` beside a prepared purifier holds."""
        return {"origin": self.origin, "source": self.source, "image_size": self.image_size}


def prepare_purifier(train: ImageSet, cfg: DiffusionConfig, out: str | Path, *, copy: bool = True,
                     source: str = "", progress: bool = True) -> PurifierOutcome:
    """The purifier for ``train``'s image size by the rule (``diffusion.purifier``, else the one shipped for the size,
    :func:`detoxops.diffusion.purifier_folder`), else one trained on ``train`` into ``out`` (``diffusion.unet`` /
    ``train`` at the data's size). With ``copy`` a configured / shipped purifier is copied to ``out`` (a pipeline
    output, with ``origin.json``); without, it is used where it is and ``out`` is only written when training.
    ``source`` names the training data in the record (e.g. the dataset version)."""
    from detoxops.diffusion import purifier_folder, train_purifier

    size = int(train.image_shape[0])  # the data's size decides, not diffusion.unet.sample_size
    out = Path(out)
    folder, origin = purifier_folder(cfg.purifier, size)
    if folder is not None and not copy:
        return PurifierOutcome(Path(folder), origin, str(folder), size)
    outcome = PurifierOutcome(out, origin if folder is not None else "trained",
                              str(folder) if folder is not None else source, size)
    sized = cfg.model_copy(update={"unet": cfg.unet.model_copy(update={"sample_size": size})})
    if not copy:  # a cache folder: train in place, so that a killed run resumes from out/checkpoint/
        train_purifier(train.images, sized, out, progress=progress)
        (out / ORIGIN_FILE).write_text(json.dumps(outcome.record(), indent=2) + "\n")
        return outcome
    with atomic_dir(out, overwrite=True) as tmp:  # a pipeline output: the whole folder appears at once
        if folder is not None:
            shutil.copytree(folder, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoint"))
        else:
            train_purifier(train.images, sized, tmp, progress=progress)
        (tmp / ORIGIN_FILE).write_text(json.dumps(outcome.record(), indent=2) + "\n")
    return outcome
