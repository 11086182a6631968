"""`detoxops diffusion` commands: train a purifier on a data source, and measure how well one denoises."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from detoxops.commands._common import fail, params_from_cli
from detoxops.commands._options import PARAMS_OPTION, PROGRESS_OPTION, SET_OPTION

diffusion_app = typer.Typer(help="Train and evaluate diffusion purifiers.", no_args_is_help=True)

DEFAULT_EVAL_LEVELS = "20,120,300"


def register(app: typer.Typer) -> None:
    app.add_typer(diffusion_app, name="diffusion")


def _parse_levels(text: str) -> list[int]:
    try:
        levels = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"--levels must be comma-separated integers, got {text!r}", code=2)
        raise
    if not levels or min(levels) < 1:
        fail(f"--levels must be positive noise levels, got {text!r}", code=2)
    return levels


def _load_data(source: str, params):  # -> dict[str, ImageSet]
    from detoxops.data import load_splits

    try:
        return load_splits(source, params.data)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        fail(str(exc))
        raise


def _format_table(metrics: dict[int, dict[str, float]]) -> str:
    lines = ["level  psnr_noisy  psnr_x0_oneshot  psnr_restored  eps_mse"]
    for t, m in sorted(metrics.items()):
        restored = f"{m['psnr_restored']:13.2f}" if "psnr_restored" in m else f"{'-':>13}"
        lines.append(
            f"{t:5d}  {m['psnr_noisy']:10.2f}  {m['psnr_x0_oneshot']:15.2f}  {restored}  {m['eps_mse']:7.4f}"
        )
    return "\n".join(lines)


@diffusion_app.command("prepare")
def prepare_command(
    data: Path = typer.Option(..., "--data", "-d", help="a dataset version folder (e.g. the ingest stage's "
                              "pipeline/raw): its training images decide the size, and train a purifier if needed"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the purifier (diffusers UNet + origin.json)"),
    for_defense: str = typer.Option("all", "--for", help="all: diffusion.purifier's rule (SampDetox, the "
                                    "baselines); dataelixir: DataElixir's purifier setting (dataelixir.purifier, "
                                    "else diffusion.purifier, else its profile's, e.g. cifar10-32-v2 for cpu_cifar10)"),
    fallback: Path = typer.Option(None, "--fallback", help="with --for dataelixir: copy this prepared purifier "
                                  "when DataElixir's setting names none (the pipeline's own, so none is trained twice)"),
    params_path: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
    progress: bool = PROGRESS_OPTION,
) -> None:
    """The purifier every later step uses (the ``train_purifier`` stage): ``diffusion.purifier`` when set, else the
    one shipped for the data's image size (both copied), else one trained here on ``--data``. ``--for dataelixir``
    prepares DataElixir's (the ``prepare_elixir_purifier`` stage)."""
    params = params_from_cli(params_path, overrides)
    from detoxops.data import load_version
    from detoxops.operations import dataelixir_diffusion, prepare_purifier

    if for_defense not in ("all", "dataelixir"):
        fail(f"--for: {for_defense!r} is not one of all, dataelixir")
    if fallback is not None and for_defense != "dataelixir":
        fail("--fallback needs --for dataelixir")
    try:
        train = load_version(data)["train"]
        cfg = params.diffusion
        if for_defense == "dataelixir":
            cfg = dataelixir_diffusion(params, int(train.image_shape[0]))
            if cfg.purifier is None and fallback is not None:
                if not (fallback / "config.json").is_file():
                    raise FileNotFoundError(f"--fallback: {fallback} holds no purifier (config.json missing)")
                cfg = cfg.model_copy(update={"purifier": str(fallback)})
        outcome = prepare_purifier(train, cfg, out, copy=True, source=str(data), progress=progress)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(outcome.record()))


@diffusion_app.command("train")
def train_command(
    data: str = typer.Option(None, "--data", "-d", help="data source (default: data.source from params)"),
    out: Path = typer.Option(..., "--out", "-o", help="output diffusers folder (resumes if it holds a checkpoint)"),
    time_budget: float = typer.Option(
        None, "--time-budget", help="stop after this many seconds of training (after writing a checkpoint)"
    ),
    cpu_budget: float = typer.Option(
        None, "--cpu-budget", help="stop once the run (all its resumed sessions) has trained for this many process "
        "CPU seconds: the budget for comparing recipes at equal CPU on a shared machine"
    ),
    eval_images: int = typer.Option(
        256, "--eval-images", help="test images for the one-shot PSNR written at every checkpoint (0 = none)"
    ),
    levels: str = typer.Option(DEFAULT_EVAL_LEVELS, "--levels", help="noise levels of the checkpoint evaluation"),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)"),
    progress: bool = PROGRESS_OPTION,
    params: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """Train (or resume) a purifier with EMA on the train split of DATA (ε prediction unless
    diffusion.train.prediction_type says otherwise).

    At every checkpoint OUT holds the EMA model as a diffusers folder (loadable by `load_purifier` while
    training continues), OUT/checkpoint/ the resumable state, and OUT/README.txt + OUT/denoising.json the
    step count and the one-shot denoising PSNR on the first --eval-images test images.
    """
    import torch

    from detoxops.diffusion.train import evaluate_denoising, train_purifier

    if threads:
        torch.set_num_threads(threads)
    cfg = params_from_cli(params, overrides)
    eval_levels = _parse_levels(levels)
    source = data or cfg.data.source
    splits = _load_data(source, cfg)
    train_images = splits["train"].images
    test_images = splits["test"].images[:eval_images] if eval_images > 0 else None
    size = train_images.shape[1]
    # sample_size auto: train_purifier builds the network for the data's size; an explicit one must match it
    if cfg.diffusion.unet.sample_size != "auto" and size != cfg.diffusion.unet.sample_size:
        fail(
            f"the data are {size}x{size} images but diffusion.unet.sample_size is "
            f"{cfg.diffusion.unet.sample_size}; set --set diffusion.unet.sample_size={size} "
            f"(or data.image_size={cfg.diffusion.unet.sample_size})",
            code=2,
        )
    started = time.time()

    def report(step: int, purifier) -> None:
        lines = [
            f"detoxops purifier trained on {source} (train split, {len(train_images)} images of {size}x{size})",
            f"step {step} of {cfg.diffusion.train.steps}, wall time {time.time() - started:.0f} s this session",
            f"config: {json.dumps(cfg.diffusion.model_dump())}",
        ]
        if test_images is not None and len(test_images):
            metrics = evaluate_denoising(purifier, test_images, eval_levels, restore=False)
            (out / "denoising.json").write_text(json.dumps({"step": step, "levels": metrics}, indent=1))
            lines += [f"one-shot denoising PSNR (dB) on the first {len(test_images)} test images:",
                      _format_table(metrics)]
        (out / "README.txt").write_text("\n".join(lines) + "\n")
        if not progress:
            typer.echo(lines[1])

    try:
        _, history = train_purifier(
            train_images, cfg.diffusion, out, progress=progress, time_budget_s=time_budget, cpu_budget_s=cpu_budget,
            on_checkpoint=report)
    except ValueError as exc:
        fail(str(exc))
        return
    typer.echo(f"{out}: step {history['step']}, final loss {history['loss'][-1][1]:.4f}")
    if (out / "README.txt").is_file():
        typer.echo((out / "README.txt").read_text())


@diffusion_app.command("eval")
def eval_command(
    purifier_path: str = typer.Argument(..., help="a diffusers UNet2DModel folder, a shipped purifier's name "
                                        "(cifar10-32, ...) or a hub id (online only)"),
    data: str = typer.Option(None, "--data", "-d", help="data source (default: data.source from params)"),
    split: str = typer.Option("test", "--split", help="which split to evaluate on"),
    n: int = typer.Option(256, "--n", help="number of images (the first N of the split)"),
    levels: str = typer.Option(DEFAULT_EVAL_LEVELS, "--levels", help="comma-separated noise levels"),
    mode: str = typer.Option("ddpm", "--mode", help="sampler of the full restoration: ddpm | ddim"),
    stride: int = typer.Option(1, "--stride", help="DDIM stride"),
    restore: bool = typer.Option(True, "--restore/--one-shot", help="also run the full reverse process"),
    holes: str = typer.Option(
        "", "--holes", help="also inpaint square holes of these sides (e.g. 3,4,8) from full noise with clean "
        "context and report the PSNR inside the hole"
    ),
    inpaint_method: str = typer.Option(
        "per-pixel", "--inpaint-method", help="per-pixel (today's sampler, t_map) | repaint (context re-noised)"
    ),
    resample: int = typer.Option(1, "--resample", help="RePaint's U (repeats per step) for --inpaint-method repaint"),
    inpaint_stride: int = typer.Option(50, "--inpaint-stride", help="DDIM stride of the inpainting from t = T"),
    inpaint_n: int = typer.Option(None, "--inpaint-n", help="images inpainted (default: --n)"),
    seed: int = typer.Option(0, "--seed"),
    victim: str = typer.Option(
        None, "--victim", help="also report this classifier's accuracy on the clean, one-shot and restored images "
        "(a classifier folder or a victim-store name, e.g. cifar10-fast/clean)"
    ),
    json_out: Path = typer.Option(None, "--json", help="also write the metrics to this JSON file"),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads"),
    params: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """PSNR of noisy input vs one-shot x0 prediction vs full restoration, per noise level; with --victim also a
    classifier's accuracy on them; with --holes also the PSNR inside square holes inpainted from full noise
    (uniform and level-map purifiers alike)."""
    import torch

    from detoxops.diffusion.inpaint import evaluate_inpainting
    from detoxops.diffusion.train import evaluate_denoising
    from detoxops.diffusion.unet import load_purifier, shipped_name, shipped_purifier_dir
    from detoxops.models import load_classifier, predict

    if threads:
        torch.set_num_threads(threads)
    if mode not in ("ddpm", "ddim"):
        fail(f"--mode must be ddpm or ddim, got {mode!r}", code=2)
    if inpaint_method not in ("per-pixel", "repaint"):
        fail(f"--inpaint-method must be per-pixel or repaint, got {inpaint_method!r}", code=2)
    if resample < 1 or inpaint_stride < 1:
        fail("--resample and --inpaint-stride must be >= 1", code=2)
    cfg = params_from_cli(params, overrides)
    eval_levels = _parse_levels(levels)
    hole_sides = _parse_levels(holes) if holes.strip() else []
    name = shipped_name(purifier_path)
    if name is not None:
        purifier_path = str(shipped_purifier_dir(name))  # a shipped purifier by name, e.g. cifar10-32
    try:
        purifier = load_purifier(purifier_path)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        fail(str(exc))
        return
    splits = _load_data(data or cfg.data.source, cfg)
    if split not in splits:
        fail(f"split {split!r} not in the data (have {sorted(splits)})", code=2)
    images = splits[split].images[:n]
    classify = None
    if victim is not None:
        try:
            model = load_classifier(victim)
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            fail(f"--victim {victim}: {exc}")
            return

        def classify(batch):
            return predict(model, batch)

    try:
        metrics = evaluate_denoising(
            purifier, images, eval_levels, mode=mode, stride=stride, seed=seed, restore=restore,
            classify=classify, labels=splits[split].labels[:n],
        )
    except ValueError as exc:
        fail(str(exc))
        return
    kind = "level-map" if getattr(purifier, "accepts_level_map", False) else "uniform"
    typer.echo(f"{purifier_path} ({kind} purifier) on {len(images)} {split} images ({mode}, stride {stride}):")
    typer.echo(_format_table(metrics))
    record = {"purifier": purifier_path, "kind": kind, "n": len(images), "mode": mode, "stride": stride,
              "levels": metrics}
    if victim is not None:
        typer.echo(f"{victim}: accuracy (%) on the clean / one-shot / restored images")
        typer.echo("level  clean  one-shot  restored")
        for t, m in sorted(metrics.items()):
            restored_acc = f"{m['acc_restored']:8.1f}" if "acc_restored" in m else f"{'-':>8}"
            typer.echo(f"{t:5d}  {m['acc_clean']:5.1f}  {m['acc_oneshot']:8.1f}  {restored_acc}")
        record["victim"] = victim
    if hole_sides:
        inpaint_images = images[: inpaint_n or n]
        try:
            holes_metrics = evaluate_inpainting(
                purifier, inpaint_images, tuple(hole_sides), method=inpaint_method, stride=inpaint_stride,
                resample=resample, seed=seed,
            )
        except ValueError as exc:
            fail(str(exc))
            return
        typer.echo(f"inpainting from t = {purifier.schedule.T} with clean context ({inpaint_method}"
                   f"{f', U = {resample}' if inpaint_method == 'repaint' else ''}, DDIM stride {inpaint_stride}, "
                   f"{len(inpaint_images)} images), PSNR inside the hole:")
        typer.echo("hole  psnr_hole  psnr_mean_fill")
        for side, m in holes_metrics.items():
            typer.echo(f"{side}x{side:<3d} {m['psnr_hole']:9.2f}  {m['psnr_hole_mean_fill']:14.2f}")
        record["inpainting"] = {"method": inpaint_method, "resample": resample, "stride": inpaint_stride,
                                "n": len(inpaint_images), "holes": holes_metrics}
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(record, indent=1))


@diffusion_app.command("export")
def export_command(
    source: str = typer.Argument(..., help="a purifier folder (e.g. a training output)"),
    dest: Path = typer.Argument(..., help="destination diffusers folder"),
    fp16: bool = typer.Option(True, "--fp16/--fp32", help="store half-precision weights (loaded as float32)"),
) -> None:
    """Copy a purifier's EMA weights + schedule into a clean folder (no training state), e.g. for shipping."""
    from detoxops.diffusion.unet import load_purifier, save_purifier

    try:
        purifier = load_purifier(source)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        fail(str(exc))
        return
    folder = save_purifier(purifier, dest, fp16=fp16)
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    typer.echo(f"{folder}: {size / 1e6:.2f} MB ({'fp16' if fp16 else 'fp32'} weights)")
