"""airbench94's training recipe (Jordan 2024, arXiv 2404.00498, §3) for :class:`~detoxops.models.fast_cnn.FastCNN`,
CPU-first, resumable, and open to backdoor attacks (poisoned sets, loop attacks' batch hooks).

What the recipe does, in the paper's order:
- the whitening layer is set from 2x2 patches of the first ``whiten_images`` training images, its weights frozen,
  its bias trained for ``whiten_bias_epochs`` epochs;
- Nesterov SGD with *decoupled* hyperparameters: ``lr`` and ``weight_decay`` are given per 1,024 examples and
  divided by ``1024 * (1 + 1 / (1 - momentum))`` (the step-size gain of Nesterov momentum), BatchNorm biases get
  ``bias_scaler`` times the learning rate; the loss is the *summed* label-smoothed cross-entropy;
- a triangular schedule per step (0.2 → 1 over the first 23 % of steps, → 0.07 at the end);
- lookahead: every ``lookahead_every`` steps the weights are pulled to an exponential average whose decay
  rises as ``0.95**5 * progress**3``; the final weights *are* that average;
- augmentation: alternating flip (a random half is flipped in epoch 1, then every image's flip toggles each
  epoch, so each image is seen both ways in every pair of epochs) and a random translation of up to
  ``translate`` pixels with reflect padding, vectorised over the batch;
- ``epochs`` may be fractional (9.9): training stops after ``ceil(steps_per_epoch * epochs)`` steps.

The network runs in channels_last memory order; its forward pass in bf16 autocast on CUDA and on CPUs with native
bf16 (``precision: auto``; 2x fp32's speed on this project's AVX512-BF16 machine), fp32 otherwise.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from detoxops.config import AirbenchConfig
from detoxops.data import ImageSet
from detoxops.data.imageset import atomic_dir
from detoxops.devices import bf16_autocast
from detoxops.models.fast_cnn import FastCNN
from detoxops.progress import tqdm
from detoxops.seeding import seed_global

RECIPE_REVISION = 2
"""Bumped when a code change alters what a run with the same data, recipe and seed trains, so that no checkpoint of
the older code is resumed (2: the whitening layer from a random sample of the training images, not the first)."""

__all__ = ["train_fast_classifier", "alternating_flip", "random_translate", "triangular_lr"]


def triangular_lr(step: int, total_steps: int, peak: float = 0.23, start: float = 0.2, end: float = 0.07) -> float:
    """airbench's schedule multiplier: linear from ``start`` to 1 over the first ``peak`` share of the steps,
    then linear down to ``end``."""
    warmup = int(total_steps * peak)
    if step < warmup:
        frac = step / warmup
        return start * (1 - frac) + frac
    frac = (step - warmup) / max(total_steps - warmup, 1)
    return (1 - frac) + end * frac


def alternating_flip(x: Tensor, base_flip: Tensor, epoch: int) -> Tensor:
    """Flip the images whose ``base_flip`` (per image, bool) XOR (epoch is odd) is set."""
    flip = (base_flip ^ bool(epoch % 2)).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def random_translate(x: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Shift every image by an independent random offset in ``[-pad, pad]`` on both axes (reflect padding),
    with one gather for the whole batch."""
    if pad <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect").permute(0, 2, 3, 1)
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, rows, cols].permute(0, 3, 1, 2)


class _Lookahead:
    """The exponential average of the weights (every float tensor of the state dict, BatchNorm statistics
    included) that the network is pulled back to every few steps."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.ema = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def sync(self, model: torch.nn.Module, decay: float) -> None:
        state = model.state_dict()
        for k, avg in self.ema.items():
            avg.lerp_(state[k], 1 - decay)
            state[k].copy_(avg)


def train_fast_classifier(
    model: FastCNN,
    train: ImageSet,
    cfg: AirbenchConfig,
    *,
    seed: int = 0,
    attack: Any = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    init_whitening: bool = True,
) -> dict[str, Any]:
    """Train ``model`` (a :class:`FastCNN`) in place on ``train``'s current labels with airbench94's recipe and
    return the history (per epoch: loss, train accuracy, seconds).

    ``attack`` with ``kind == "loop"`` transforms every clean shuffled batch before augmentation
    (``attack.training_batch``: ``batch_transform`` plus the JPEG storage of ``attack.jpeg_quality``); attacks
    with ``replaces_augmentation`` bring their own. With
    ``checkpoint_dir`` everything (weights, lookahead average, optimizer, schedule, RNG) is saved after every
    epoch and an interrupted run resumes there with the same final weights; a checkpoint of another run (other
    data, recipe, seed, attack or network) is ignored with a warning and overwritten. ``init_whitening=False`` keeps the
    current whitening layer (fine-tuning a trained model).
    """
    if not isinstance(model, FastCNN):
        raise ValueError(f"the airbench recipe trains fast_cnn models, got {type(model).__name__}")
    n = len(train)
    if n < 2:
        raise ValueError(f"cannot train a classifier on {n} image(s)")
    if threads is not None:
        torch.set_num_threads(int(threads))
    dev = torch.device(device)
    seed_global(seed)
    images = torch.from_numpy(np.array(train.images)).permute(0, 3, 1, 2)  # uint8 (N, C, H, W), CPU
    labels = torch.from_numpy(np.asarray(train.labels, dtype=np.int64))
    model.to(dev).to(memory_format=torch.channels_last)

    batch_size = min(cfg.batch_size, n)
    steps_per_epoch = n // batch_size  # drop_last, as airbench
    total_steps = math.ceil(steps_per_epoch * cfg.epochs)
    kilostep_scale = 1024 * (1 + 1 / (1 - cfg.momentum))
    lr = cfg.lr / kilostep_scale
    wd = cfg.weight_decay * batch_size / kilostep_scale
    lr_biases = lr * cfg.bias_scaler
    norm_biases = [p for k, p in model.named_parameters() if "norm" in k and p.requires_grad]
    others = [p for k, p in model.named_parameters() if "norm" not in k and p.requires_grad]
    opt = torch.optim.SGD(
        [dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
         dict(params=others, lr=lr, weight_decay=wd / lr)],
        momentum=cfg.momentum, nesterov=True,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: triangular_lr(s, total_steps))
    alpha = 0.95**5 * (torch.arange(total_steps + 1) / total_steps) ** 3
    gen = torch.Generator().manual_seed(seed)
    # Which images start flipped: its own generator, so a resumed run re-derives it without saving it.
    base_flip = torch.rand(n, generator=torch.Generator().manual_seed(seed + 1)) < 0.5

    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    history: dict[str, Any] = {"epoch": [], "loss": [], "train_acc": [], "seconds": []}
    start_epoch, step = 0, 0
    # what the checkpoint must belong to: a checkpoint of other data, recipe, seed or attack is not resumed
    fingerprint = hashlib.sha256(json.dumps(
        [RECIPE_REVISION, train.content_hash(), cfg.model_dump(mode="json"), seed, init_whitening,
         attack.describe() if hasattr(attack, "describe") else None, type(model).__name__,
         {k: list(v.shape) for k, v in model.state_dict().items()}], sort_keys=True, default=str).encode()).hexdigest()
    saved = ckpt is not None and (ckpt / "state.json").is_file()
    if saved and _fingerprint(ckpt) != fingerprint:
        warnings.warn(f"{ckpt}: checkpoint of a different run (data, recipe, seed or attack changed); starting afresh",
                      stacklevel=2)
        saved = False
    if saved:
        lookahead = _Lookahead(model)
        start_epoch, step, history = _load_state(ckpt, model, lookahead, opt, sched, gen, dev)
    else:
        if init_whitening:
            # a random sample, not the first images: stored datasets are often sorted by class (this project's
            # loaders sort by class and path, so the first 5,000 CIFAR-10 images are all airplanes), while
            # airbench's first 5,000 of torchvision's order mix every class. Own generator: the training RNG
            # stream is unchanged.
            sample = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 2))[: cfg.whiten_images]
            model.init_whitening(images[sample.sort().values].float().div_(255.0).to(dev))
        lookahead = _Lookahead(model)

    loop_attack = attack is not None and getattr(attack, "kind", "data") == "loop"
    own_augment = not (loop_attack and getattr(attack, "replaces_augmentation", False))
    use_amp = bf16_autocast(cfg.precision, dev)
    n_epochs = math.ceil(cfg.epochs)
    for epoch in range(start_epoch, n_epochs):
        if step >= total_steps:
            break
        t0 = time.perf_counter()
        model.train()
        model.whiten.bias.requires_grad_(epoch < cfg.whiten_bias_epochs)
        perm = torch.randperm(n, generator=gen)
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{n_epochs}", disable=not progress, leave=False)
        for i in bar:
            idx = perm[i * batch_size : (i + 1) * batch_size]
            xb = images[idx].float().div_(255.0)
            yb = labels[idx]
            if loop_attack:
                xb, yb = getattr(attack, "training_batch", attack.batch_transform)(xb, yb, generator=gen)
            if own_augment:
                xb = random_translate(alternating_flip(xb, base_flip[idx], epoch), cfg.translate, gen)
            xb = xb.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
            yb = yb.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing, reduction="sum")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % cfg.lookahead_every == 0:
                lookahead.sync(model, float(alpha[step]))
            total_loss += float(loss.detach())
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
            bar.set_postfix(loss=f"{total_loss / max(seen, 1):.3f}")
            if step >= total_steps:
                lookahead.sync(model, 1.0)  # the final weights are the lookahead average
                break
        history["epoch"].append(epoch + 1)
        history["loss"].append(total_loss / max(seen, 1))
        history["train_acc"].append(correct / max(seen, 1))
        history["seconds"].append(round(time.perf_counter() - t0, 2))
        if ckpt is not None:
            _save_state(ckpt, model, lookahead, opt, sched, gen, epoch + 1, step, history, fingerprint)
    model.eval()
    return history


def _fingerprint(ckpt: Path) -> str | None:
    try:
        return json.loads((ckpt / "state.json").read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def _save_state(ckpt: Path, model, lookahead: _Lookahead, opt, sched, gen, epoch: int, step: int,
                history: dict[str, Any], fingerprint: str) -> None:
    with atomic_dir(ckpt, overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        save_file({k: v.detach().cpu().contiguous() for k, v in lookahead.ema.items()}, tmp / "lookahead.safetensors")
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": gen.get_state()},
                   tmp / "trainer.pt")
        (tmp / "state.json").write_text(json.dumps({"epoch": epoch, "step": step, "history": history,
                                                    "fingerprint": fingerprint}))


def _load_state(ckpt: Path, model, lookahead: _Lookahead, opt, sched, gen, dev) -> tuple[int, int, dict[str, Any]]:
    state = json.loads((ckpt / "state.json").read_text())
    model.load_state_dict(load_file(ckpt / "model.safetensors", device=str(dev)))
    lookahead.ema = load_file(ckpt / "lookahead.safetensors", device=str(dev))
    trainer = torch.load(ckpt / "trainer.pt", map_location=dev, weights_only=True)
    opt.load_state_dict(trainer["optimizer"])
    sched.load_state_dict(trainer["scheduler"])
    gen.set_state(trainer["rng"].cpu())
    return int(state["epoch"]), int(state["step"]), state["history"]
