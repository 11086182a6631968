"""Train an ε-prediction purifier (DDPM loss) with EMA weights, resumable checkpoints and progress.

``DiffusionTrainConfig.max_t`` restricts training to the low-noise levels the defenses use (SampDetox
t ≤ 120–300, DataElixir T = 150), which is what makes a useful CIFAR-10 purifier trainable on a CPU.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from detoxops.config import DiffusionConfig, DiffusionTrainConfig
from detoxops.data.imageset import atomic_dir
from detoxops.devices import bf16_autocast, resolve_device  # resolve_device re-exported
from detoxops.diffusion.purifier import Purifier
from detoxops.diffusion.schedule import NoiseSchedule
from detoxops.diffusion.unet import build_unet, save_purifier
from detoxops.progress import tqdm
from detoxops.seeding import seeded

__all__ = ["train_purifier", "evaluate_denoising", "resolve_device", "images_to_diffusion", "write_sample_grid"]

CKPT_DIR = "checkpoint"


def images_to_diffusion(images_u8: np.ndarray) -> Tensor:
    """uint8 NHWC → float32 NCHW in [-1, 1]."""
    if images_u8.dtype != np.uint8 or images_u8.ndim != 4:
        raise ValueError(f"expected uint8 images (N, H, W, C), got {images_u8.dtype} {images_u8.shape}")
    # np.array copies: stored image sets are read-only memory maps, which torch must not wrap.
    return torch.from_numpy(np.array(images_u8)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


LOW_BAND = 200
"""Half of every batch draws its levels from [1, min(LOW_BAND, max_t)]: the defenses spend most of their
steps there (SampDetox t1 = 20, t2 = 120; DataElixir T = 150), so it gets twice the density."""


def _sample_levels(n: int, max_t: int, generator: torch.Generator) -> Tensor:
    """Levels in [1, max_t]: first half of the batch uniform on [1, max_t], second half on the low band."""
    wide = torch.randint(1, max_t + 1, (n - n // 2,), generator=generator)
    low = torch.randint(1, min(LOW_BAND, max_t) + 1, (n // 2,), generator=generator)
    return torch.cat([wide, low])


def lr_factor(step: int, tc: DiffusionTrainConfig) -> float:
    """Multiplier of ``tc.lr`` for the update made at 0-based ``step``: 1 before the decay window (the last
    ``lr_decay_steps`` of ``tc.steps``), then falling to ``1 / lr_decay_steps`` (linear) or ~0 (cosine) at the last
    update."""
    if tc.lr_schedule == "constant":
        return 1.0
    window = min(tc.lr_decay_steps or tc.steps, tc.steps)
    remaining = tc.steps - step  # updates left, this one included
    if remaining >= window:
        return 1.0
    frac = max(remaining, 0) / window  # 1 at the window's start, 1 / window at the last update
    return frac if tc.lr_schedule == "linear" else 0.5 * (1.0 - math.cos(math.pi * frac))


def train_purifier(
    images_u8: np.ndarray | Any,
    cfg: DiffusionConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    time_budget_s: float | None = None,
    cpu_budget_s: float | None = None,
    on_checkpoint: Callable[[int, Purifier], None] | None = None,
) -> tuple[Purifier, dict[str, Any]]:
    """Train (or resume) a purifier on uint8 NHWC images; writes the EMA model to ``out_dir``.

    ``out_dir/checkpoint/`` holds the resumable state (online + EMA weights and AdamW state, safetensors /
    ``torch.save`` read back with ``weights_only=True``); ``out_dir`` itself is a diffusers folder with the
    EMA weights. ``time_budget_s`` stops early (after a checkpoint) — used for the "about an hour on CPU" run.
    ``cpu_budget_s`` stops once the run's training has used that many process CPU seconds *in all its sessions*
    (``history["cpu_seconds"]``): the fair budget for comparing recipes on a shared machine, where wall time
    depends on the other jobs. Returns the EMA purifier and a history dict.
    """
    tc = cfg.train
    images_u8 = getattr(images_u8, "images", images_u8)  # an ImageSet trains on its images
    if cfg.unet.sample_size == "auto":  # the network is built for the training images' size
        cfg = cfg.model_copy(update={"unet": cfg.unet.model_copy(update={"sample_size": int(images_u8.shape[1])})})
    if images_u8.shape[1] != cfg.unet.sample_size or images_u8.shape[3] != cfg.unet.in_channels:
        raise ValueError(
            f"images are {images_u8.shape[1]}x{images_u8.shape[2]}x{images_u8.shape[3]} but diffusion.unet is "
            f"{cfg.unet.sample_size}x{cfg.unet.sample_size}x{cfg.unet.in_channels}"
        )
    device = resolve_device(tc.device)
    out = Path(out_dir)
    ckpt = out / CKPT_DIR
    schedule = NoiseSchedule.from_config(cfg.schedule)
    max_t = min(tc.max_t or schedule.T, schedule.T)

    with seeded(tc.seed):  # the initial weights; everything after draws from ``gen``
        unet = build_unet(cfg.unet).to(device)
    if tc.init is not None and not (ckpt / "state.json").is_file():
        _init_from(unet, tc.init)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(tc.seed)
    history: dict[str, Any] = {"loss": [], "step": 0, "seconds": 0.0, "cpu_seconds": 0.0,
                               "prediction_type": tc.prediction_type}
    start_step = 0
    if (ckpt / "state.json").is_file():
        start_step, history = _load_checkpoint(ckpt, unet, ema, opt, gen)
        resumed_type = history.get("prediction_type", "epsilon")
        if resumed_type != tc.prediction_type:
            raise ValueError(f"{ckpt}: the run being resumed trains prediction_type {resumed_type!r}, "
                             f"diffusion.train.prediction_type is {tc.prediction_type!r}; use another --out")
        history["prediction_type"] = resumed_type

    data = images_to_diffusion(images_u8)  # kept on CPU; batches move to the device
    model = torch.compile(unet) if tc.compile else unet
    use_amp = bf16_autocast(tc.precision, device)
    if device.type == "cuda":
        unet.to(memory_format=torch.channels_last)
    abar = schedule.abar.to(device=device, dtype=torch.float32)

    prior_seconds = float(history.get("seconds", 0.0))
    prior_cpu = float(history.get("cpu_seconds", 0.0))
    train_seconds = 0.0  # this session's training time, checkpoint writing excluded
    train_cpu = 0.0  # the same in process CPU seconds (all threads)
    bar = tqdm(total=tc.steps, initial=start_step, desc="train purifier", disable=not progress)
    step = start_step
    running = history["loss"][-1][1] if history["loss"] else 0.0
    tick, cpu_tick = time.time(), time.process_time()
    if cpu_budget_s is not None and prior_cpu >= cpu_budget_s:  # a finished budget: nothing left to train
        bar.close()
        return Purifier(ema.eval(), schedule, prediction_type=tc.prediction_type), history
    while step < tc.steps:
        idx = torch.randint(0, len(data), (tc.batch_size,), generator=gen)
        x0 = data[idx]
        flip = torch.rand(tc.batch_size, generator=gen) < 0.5
        x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0).to(device)
        levels = _sample_levels(tc.batch_size, max_t, gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        ab = abar[levels].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            pred = model(x_t, levels - 1).sample
        if tc.prediction_type == "epsilon":
            target = noise
        elif tc.prediction_type == "sample":
            target = x0
        else:  # v = √ᾱ ε − √(1-ᾱ) x_0
            target = ab.sqrt() * noise - (1 - ab).sqrt() * x0
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        lr_now = tc.lr * lr_factor(step, tc)  # set every step: a resumed run follows the config, not the checkpoint
        for group in opt.param_groups:
            group["lr"] = lr_now
        opt.step()
        # EMA starts after a short warm-up so early random weights do not dominate the average.
        _ema_update(ema, unet, tc.ema_decay if step >= 100 else 0.0)
        step += 1
        running = loss.item() if running == 0.0 else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        now, cpu_now = time.time(), time.process_time()
        train_seconds += now - tick
        train_cpu += cpu_now - cpu_tick
        tick, cpu_tick = now, cpu_now
        stop = (time_budget_s is not None and train_seconds >= time_budget_s) or (
            cpu_budget_s is not None and prior_cpu + train_cpu >= cpu_budget_s)
        if step % tc.checkpoint_every == 0 or step == tc.steps or stop:
            history["loss"].append([step, running])
            history.setdefault("lr", []).append([step, lr_now])
            history["step"] = step
            history["seconds"] = prior_seconds + train_seconds
            history["cpu_seconds"] = prior_cpu + train_cpu
            _save_checkpoint(ckpt, unet, ema, opt, gen, step, history)
            purifier = Purifier(ema, schedule, prediction_type=tc.prediction_type)
            save_purifier(purifier, out)
            if on_checkpoint is not None:
                on_checkpoint(step, purifier)
            tick, cpu_tick = time.time(), time.process_time()
        if tc.sample_every and (step % tc.sample_every == 0 or step == tc.steps or stop):
            write_sample_grid(Purifier(ema, schedule, prediction_type=tc.prediction_type), images_u8[:8],
                              out / "samples" / f"step_{step:07d}.png", seed=tc.seed)
            tick, cpu_tick = time.time(), time.process_time()
        if stop:
            break
    bar.close()
    return Purifier(ema.eval(), schedule, prediction_type=tc.prediction_type), history


def _init_from(unet: torch.nn.Module, source: str) -> None:
    """Copy the weights of purifier ``source`` (folder or shipped name, read from safetensors) into ``unet``."""
    from detoxops.diffusion.unet import load_purifier, shipped_name, shipped_purifier_dir

    name = shipped_name(source)
    folder = shipped_purifier_dir(name) if name is not None else Path(source)
    start = load_purifier(folder).unet
    ours, theirs = unet.state_dict(), start.state_dict()
    mismatched = sorted(k for k in ours.keys() | theirs.keys()
                        if k not in ours or k not in theirs or ours[k].shape != theirs[k].shape)
    if mismatched:
        raise ValueError(f"diffusion.train.init: {folder} is not a diffusion.unet network ({len(mismatched)} "
                         f"parameters differ, e.g. {mismatched[0]}); set diffusion.unet to its configuration")
    unet.load_state_dict({k: v.to(ours[k].dtype) for k, v in theirs.items()})


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def _save_checkpoint(
    ckpt: Path, unet: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer,
    gen: torch.Generator, step: int, history: dict[str, Any],
) -> None:
    with atomic_dir(ckpt, overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()},
                  tmp / "model.safetensors")
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}, tmp / "ema.safetensors")
        torch.save({"optimizer": opt.state_dict(), "generator": gen.get_state()}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "history": history}))


def _load_checkpoint(
    ckpt: Path, unet: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator
) -> tuple[int, dict[str, Any]]:
    state = json.loads((ckpt / "state.json").read_text())
    device = next(unet.parameters()).device
    unet.load_state_dict(load_file(ckpt / "model.safetensors", device=str(device)))
    ema.load_state_dict(load_file(ckpt / "ema.safetensors", device=str(device)))
    extra = torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=True)
    opt.load_state_dict(extra["optimizer"])
    gen.set_state(extra["generator"].cpu())
    return int(state["step"]), state["history"]


@torch.no_grad()
def write_sample_grid(
    purifier: Purifier, images_u8: np.ndarray, path: str | Path, levels: tuple[int, ...] = (20, 120),
    *, stride: int = 10, seed: int = 0,
) -> Path:
    """PNG grid, one row each: clean, then for every level the noised input and its DDIM restoration."""
    from PIL import Image

    from detoxops.diffusion.samplers import denoise

    x0 = images_to_diffusion(np.asarray(images_u8)).to(purifier.device)
    gen = torch.Generator(device=purifier.device).manual_seed(seed)
    rows = [x0]
    for t in levels:
        noise = torch.randn(x0.shape, generator=gen, device=x0.device)
        x_t = purifier.schedule.q_sample(x0, t, noise)
        rows += [x_t, denoise(purifier, x_t, t, mode="ddim", stride=stride)]
    grid = torch.stack(rows)  # (R, N, C, H, W)
    r, n, c, h, w = grid.shape
    grid = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 3, 1, 4, 2).reshape(r * h, n * w, c)
    arr = grid.cpu().numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[..., 0] if c == 1 else arr).save(path)
    return path


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB for images in [-1, 1] (data range 2)."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(4.0 / mse)


@torch.no_grad()
def evaluate_denoising(
    purifier: Purifier,
    images_u8: np.ndarray,
    levels: tuple[int, ...] = (20, 120, 300),
    *,
    mode: str = "ddpm",
    stride: int = 1,
    eta: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
    restore: bool = True,
    classify: Callable[[np.ndarray], np.ndarray] | None = None,
    labels: np.ndarray | None = None,
) -> dict[int, dict[str, float]]:
    """PSNR (dB) of the noisy input, the one-shot x̂_0 and the full reverse-process restoration per level,
    plus the ε-MSE — the "denoising error per band of t". ``restore=False`` skips the reverse process
    (t UNet passes per image) and reports only the one-shot numbers (one pass). ``eta`` is DDIM's stochasticity
    (0: deterministic; 1: ancestral noise at every step, DDPM-like at the given stride).

    With ``classify`` (uint8 NHWC batch → labels, e.g. a victim's ``predict``) and the images' ``labels``, also
    the classifier's accuracy (%) on the clean images (``acc_clean``), on the one-shot x̂_0 (``acc_oneshot``) and
    on the restorations (``acc_restored``), each quantised to uint8 as a defense hands images to a model: how
    much of the class a restoration from level t keeps (issue #25's victim check)."""
    from detoxops.data.tensors import from_tensor
    from detoxops.diffusion.samplers import denoise

    if classify is not None:
        if labels is None or len(labels) != len(images_u8):
            raise ValueError(f"classify needs one label per image: {len(images_u8)} images, "
                             f"{'no' if labels is None else len(labels)} labels")
        labels = np.asarray(labels)

    def n_correct(x: Tensor, start: int) -> float:
        assert classify is not None and labels is not None
        pred = np.asarray(classify(from_tensor(((x.clamp(-1, 1) + 1) / 2).float().cpu())))
        return float((pred == labels[start : start + len(x)]).sum()) * 100.0

    x_all = images_to_diffusion(images_u8)
    gen = torch.Generator().manual_seed(seed)
    # the sampler's own noise (DDPM, DDIM eta > 0) has its own stream, so every sampler sees the same noised inputs
    sampler_gen = torch.Generator().manual_seed(seed + 1)
    out: dict[int, dict[str, float]] = {}
    for t in levels:
        sums = {"psnr_noisy": 0.0, "psnr_x0_oneshot": 0.0, "eps_mse": 0.0}
        if restore:
            sums["psnr_restored"] = 0.0
        for i in range(0, len(x_all), batch_size):
            x0 = x_all[i : i + batch_size].to(purifier.device)
            noise = torch.randn(x0.shape, generator=gen).to(purifier.device)
            x_t = purifier.schedule.q_sample(x0, t, noise)
            eps = purifier(x_t, torch.full((len(x0),), t, dtype=torch.long, device=x0.device))
            x0_hat = purifier.schedule.predict_x0(x_t, t, eps).clamp(-1, 1)
            sums["psnr_noisy"] += float(psnr(x_t.clamp(-1, 1), x0).sum())
            sums["psnr_x0_oneshot"] += float(psnr(x0_hat, x0).sum())
            if classify is not None:
                sums["acc_clean"] = sums.get("acc_clean", 0.0) + n_correct(x0, i)
                sums["acc_oneshot"] = sums.get("acc_oneshot", 0.0) + n_correct(x0_hat, i)
            if restore:
                restored = denoise(purifier, x_t, t, mode=mode, stride=stride, eta=eta, generator=sampler_gen)
                sums["psnr_restored"] += float(psnr(restored.clamp(-1, 1), x0).sum())
                if classify is not None:
                    sums["acc_restored"] = sums.get("acc_restored", 0.0) + n_correct(restored, i)
            sums["eps_mse"] += float((eps - noise).pow(2).flatten(1).mean(1).sum())
        out[int(t)] = {k: v / len(x_all) for k, v in sums.items()}
    return out
