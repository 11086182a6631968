"""Save / load classifiers as safetensors weights + a JSON config (never pickle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from detoxops.fileio import atomic_dir
from detoxops.modelfiles import (
    ModelFileError,
    bounded_int,
    check_parameter_budget,
    load_checked_state,
    read_json_config,
)
from detoxops.models.store import resolve_classifier_path

WEIGHTS = "model.safetensors"
CONFIG = "classifier.json"


def save_classifier(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None, half: bool = False) -> Path:
    """Write ``path/model.safetensors`` and ``path/classifier.json`` (arch, num_classes, in_channels,
    image_size, meta) atomically. The model must come from :func:`build_classifier`. ``half`` stores the
    convolution / linear weights in fp16 (half the size; loading casts back to fp32) and keeps BatchNorm's
    statistics and biases in fp32, where a tiny running variance would underflow fp16."""
    spec = getattr(model, "detoxops_spec", None)
    if spec is None:
        raise ValueError("save_classifier needs a model built by detoxops.models.build_classifier")
    dest = Path(path)
    with atomic_dir(dest, overwrite=True) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        if half:
            state = {k: v.half() if k.endswith("weight") and v.ndim > 1 else v for k, v in state.items()}
        save_file(state, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps({**spec, "meta": meta or {}}, indent=1, default=str))
    return dest


def read_classifier_config(path: str | Path) -> dict[str, Any]:
    """The folder's ``classifier.json``, checked: a known arch and every size within bounds
    (:class:`~detoxops.modelfiles.ModelFileError` otherwise)."""
    from detoxops.models import ARCHITECTURES

    p = Path(path)
    if not (p / CONFIG).is_file() or not (p / WEIGHTS).is_file():
        raise FileNotFoundError(f"{p}: not a saved classifier (needs {CONFIG} and {WEIGHTS})")
    cfg = read_json_config(p / CONFIG, "classifier config")
    where = str(p / CONFIG)
    if cfg.get("arch") not in ARCHITECTURES:
        raise ModelFileError(f"{where}: unknown arch {cfg.get('arch')!r}; known: {', '.join(ARCHITECTURES)}")
    bounded_int(cfg, "num_classes", 2, 100_000, where)
    bounded_int(cfg, "in_channels", 1, 4, where, default=3)
    bounded_int(cfg, "image_size", 4, 1024, where, default=32)
    bounded_int(cfg, "width", 1, 1024, where, default=None)
    widths = cfg.get("widths")
    if widths is not None:
        if not isinstance(widths, list) or not 1 <= len(widths) <= 8:
            raise ModelFileError(f"{where}: widths must be a list of 1 to 8 integers")
        for i in range(len(widths)):
            bounded_int({f"widths[{i}]": widths[i]}, f"widths[{i}]", 1, 4096, where)
    return cfg


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the architecture from its JSON config and load the safetensors weights (eval mode).

    Untrusted folders are checked before anything is allocated (:mod:`detoxops.modelfiles`): config bounds, the
    network's size on the meta device, the weights' header (names, shapes, dtypes, truncation) against it, then
    finiteness; any problem is a :class:`~detoxops.modelfiles.ModelFileError` naming the file and tensor."""
    from detoxops.models import build_classifier

    path = resolve_classifier_path(path)  # a folder, or a name in the victim store (detoxops.models.store)
    cfg = read_classifier_config(path)
    args = (cfg["arch"], int(cfg["num_classes"]), int(cfg.get("in_channels", 3)), int(cfg.get("image_size", 32)))
    kwargs = {"width": cfg.get("width"), "widths": cfg.get("widths")}
    with torch.device("meta"):
        skeleton = build_classifier(*args, **kwargs)
    check_parameter_budget(skeleton, str(Path(path) / CONFIG))
    state = load_checked_state(Path(path) / WEIGHTS, skeleton.state_dict(), str(device))
    model = build_classifier(*args, **kwargs)
    model.load_state_dict(state)
    model.detoxops_meta = cfg.get("meta", {})
    return model.to(device).eval()
