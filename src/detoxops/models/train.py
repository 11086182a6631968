"""One training loop for every victim: BackdoorBench's recipe (SGD 0.01, momentum 0.9, wd 5e-4, cosine,
random crop + flip, batch 128), loop attacks' batch hook, resumable per-epoch checkpoints, progress bar.

Augmentation runs on whole batches as tensors (no PIL per sample). On CUDA the forward pass uses bf16 autocast
and channels_last.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from detoxops.config import VictimConfig
from detoxops.data import ImageSet
from detoxops.devices import resolve_device  # re-exported as detoxops.models.resolve_device
from detoxops.fileio import atomic_dir
from detoxops.progress import tqdm
from detoxops.seeding import seed_global

__all__ = ["train_classifier", "random_crop_flip", "resolve_device"]


def random_crop_flip(x: Tensor, generator: torch.Generator, pad: int | None = None) -> Tensor:
    """Random crop after zero padding (``RandomCrop(size, padding=size // 8)``) and horizontal flip, per sample,
    vectorised with one advanced-indexing gather."""
    b, c, h, w = x.shape
    pad = max(1, h // 8) if pad is None else pad
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (B, H+2p, W+2p, C)
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = ox[:, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device).view(b, 1, 1, 1)
    return torch.where(flip, out.flip(-1), out).contiguous()


def train_classifier(
    model: nn.Module,
    train: ImageSet,
    cfg: VictimConfig,
    *,
    attack: Any = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    epochs: int | None = None,
    lr: float | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on ``train`` (its current labels) and return the history, with the recipe
    ``cfg.training_recipe`` names (``airbench``: :func:`detoxops.models.fast_train.train_fast_classifier`).

    ``attack`` with ``kind == "loop"`` transforms every training batch (``attack.training_batch``, else ``batch_transform``); attacks
    that set ``replaces_augmentation`` bring their own augmentation. With ``checkpoint_dir`` the state is
    saved after every epoch (safetensors weights; optimizer/scheduler/RNG via ``torch.save`` read back with
    ``weights_only=True``) and an interrupted run resumes where it stopped, giving the same final weights.
    ``epochs`` / ``lr`` override the config (fine-tuning; for airbench ``lr`` scales its decoupled rate by
    ``lr / cfg.lr`` and the whitening layer is kept).
    """
    dev = resolve_device(device if device is not None else cfg.device)
    if cfg.arch == "auto":  # the recipe follows the model as it was built (a fine-tuning set may be larger)
        built = getattr(model, "detoxops_spec", {}).get("arch")
        cfg = cfg.with_arch(built) if built else cfg.for_image_size(train.images.shape[1], len(train))
    if cfg.training_recipe == "airbench":
        from detoxops.models.fast_train import train_fast_classifier

        recipe = cfg.airbench
        fine_tune = epochs is not None or lr is not None
        if fine_tune:  # continue from the current weights: same whitening layer, the given epochs / lr scale
            recipe = recipe.model_copy(update={"epochs": float(epochs or recipe.epochs),
                                               "lr": recipe.lr * (lr / cfg.lr if lr is not None else 1.0)})
        return train_fast_classifier(model, train, recipe, seed=cfg.seed, attack=attack,
                                     checkpoint_dir=checkpoint_dir, progress=progress, device=dev,
                                     threads=cfg.threads, init_whitening=not fine_tune)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    n_epochs = cfg.epochs if epochs is None else epochs
    if len(train) == 0:
        raise ValueError("cannot train a classifier on an empty dataset")
    seed_global(cfg.seed)
    model.to(dev)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    images = torch.from_numpy(np.array(train.images)).permute(0, 3, 1, 2)  # uint8 copy (source may be a read-only memmap), on CPU
    labels = torch.from_numpy(np.asarray(train.labels, dtype=np.int64))
    opt = torch.optim.SGD(model.parameters(), lr=lr or cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_epochs) if cfg.scheduler == "cosine" else None
    gen = torch.Generator().manual_seed(cfg.seed)
    history: dict[str, Any] = {"epoch": [], "loss": [], "train_acc": []}
    start = 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and (ckpt / "state.json").is_file():
        start, history = _load_state(ckpt, model, opt, sched, gen, dev)

    loop_attack = attack is not None and getattr(attack, "kind", "data") == "loop"
    own_augment = cfg.augment and not (loop_attack and getattr(attack, "replaces_augmentation", False))
    use_amp = dev.type == "cuda"
    n = len(train)
    for epoch in range(start, n_epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(range(0, n, cfg.batch_size), desc=f"epoch {epoch + 1}/{n_epochs}", disable=not progress,
                   leave=False)
        for i in bar:
            idx = perm[i : i + cfg.batch_size]
            if len(idx) < 2 and n > 1:  # BatchNorm cannot train on a single sample
                continue
            xb = images[idx].float().div_(255.0)
            yb = labels[idx]
            if loop_attack:
                xb, yb = getattr(attack, "training_batch", attack.batch_transform)(xb, yb, generator=gen)
            if own_augment:
                xb = random_crop_flip(xb, gen)
            xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += float(loss.detach()) * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
            bar.set_postfix(loss=f"{total_loss / max(seen, 1):.3f}")
        if sched is not None:
            sched.step()
        history["epoch"].append(epoch + 1)
        history["loss"].append(total_loss / max(seen, 1))
        history["train_acc"].append(correct / max(seen, 1))
        if ckpt is not None:
            _save_state(ckpt, model, opt, sched, gen, epoch + 1, history)
    model.eval()
    return history


def _save_state(ckpt: Path, model, opt, sched, gen, epoch: int, history: dict[str, Any]) -> None:
    with atomic_dir(ckpt, overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  tmp / "model.safetensors")
        torch.save(
            {"optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched else {},
             "rng": gen.get_state()},
            tmp / "trainer.pt",
        )
        (tmp / "state.json").write_text(json.dumps({"epoch": epoch, "history": history}))


def _load_state(ckpt: Path, model, opt, sched, gen, dev) -> tuple[int, dict[str, Any]]:
    state = json.loads((ckpt / "state.json").read_text())
    model.load_state_dict(load_file(ckpt / "model.safetensors", device=str(dev)))
    trainer = torch.load(ckpt / "trainer.pt", map_location=dev, weights_only=True)
    opt.load_state_dict(trainer["optimizer"])
    if sched is not None and trainer["scheduler"]:
        sched.load_state_dict(trainer["scheduler"])
    gen.set_state(trainer["rng"].cpu())
    return int(state["epoch"]), state["history"]
