"""Save / load classifiers as safetensors weights + a JSON config (never pickle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from detoxops.data.imageset import atomic_dir
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
    p = Path(path)
    if not (p / CONFIG).is_file() or not (p / WEIGHTS).is_file():
        raise FileNotFoundError(f"{p}: not a saved classifier (needs {CONFIG} and {WEIGHTS})")
    return json.loads((p / CONFIG).read_text())


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the architecture from its JSON config and load the safetensors weights (eval mode)."""
    from detoxops.models import build_classifier

    path = resolve_classifier_path(path)  # a folder, or a name in the victim store (detoxops.models.store)
    cfg = read_classifier_config(path)
    model = build_classifier(cfg["arch"], cfg["num_classes"], cfg.get("in_channels", 3), cfg.get("image_size", 32),
                             width=cfg.get("width"), widths=cfg.get("widths"))
    model.load_state_dict(load_file(Path(path) / WEIGHTS, device=str(device)))
    model.detoxops_meta = cfg.get("meta", {})
    return model.to(device).eval()
