"""`detoxops detox` commands: detoxify a stored image set (SampDetox), and score defenses (CA / PA / ASR)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from detoxops.commands._common import PARAMS_OPTION, SET_OPTION, fail, params_from_cli

detox_app = typer.Typer(
    help="Inference-time sample detoxification (SampDetox) and its evaluation.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(detox_app, name="detox")


def _load_purifier(path: Path):
    from detoxops.diffusion import load_purifier

    if not path.exists():
        fail(f"purifier not found: {path}")
    return load_purifier(path)


def _load_victim(path: Path):
    from detoxops.models import load_classifier

    if not path.exists():
        fail(f"victim model not found: {path}")
    return load_classifier(path)


def _load_imageset(path: Path, what: str):
    from detoxops.data import ImageSet

    if not path.exists():
        fail(f"{what} image set not found: {path}")
    try:
        return ImageSet.load(path)
    except (ValueError, FileNotFoundError) as exc:
        fail(f"{what} image set {path}: {exc}")


@detox_app.command("run")
def run_command(
    images: Path = typer.Argument(..., help="a saved ImageSet folder (images.npy, labels.npy, meta.json)"),
    purifier: Path = typer.Option(..., "--purifier", help="diffusers UNet folder of the purifier"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the detoxified ImageSet (+ maps.npz)"),
    defense: str = typer.Option("sampdetox", "--defense", help="defense name, see detoxops.defenses.catalog"),
    limit: int = typer.Option(None, "--limit", help="only the first N images"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    params: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """Detoxify IMAGES and save them as a new ImageSet, with the trigger maps and noise levels."""
    from detoxops.defenses.catalog import build_defense
    from detoxops.defenses.guard import Detoxifier

    cfg = params_from_cli(params, overrides).sampdetox
    src = _load_imageset(images, "input")
    if limit is not None:
        src = src.subset(np.arange(min(limit, len(src))))
    try:
        d = build_defense(defense, _load_purifier(purifier), cfg)
    except ValueError as exc:
        fail(str(exc))
        return
    guard = Detoxifier(
        lambda batch: np.zeros(len(batch), dtype=np.int64), d, cfg.batch_size, progress=progress
    )
    detoxed = np.empty_like(np.asarray(src.images))
    maps: dict[str, list[np.ndarray]] = {}
    for start, batch, batch_maps in guard.batches(src.images, with_maps=True):
        detoxed[start : start + len(batch)] = batch
        for k, v in batch_maps.items():
            maps.setdefault(k, []).append(v)
    result = src.replace(images=detoxed).with_transform(
        {"op": "detox", "defense": defense, **cfg.resolved().model_dump(mode="json")}
    )
    saved = result.save(out, overwrite=True)
    if maps:
        np.savez_compressed(Path(saved) / "maps.npz", **{k: np.concatenate(v) for k, v in maps.items()})
    typer.echo(f"{saved}: {len(result)} images detoxified with {defense} ({cfg.resolved().profile} profile)")


@detox_app.command("eval")
def eval_command(
    victim: Path = typer.Option(
        ..., "--victim", help="the victim classifier (detoxops.models.save_classifier)"
    ),
    clean: Path = typer.Option(..., "--clean", help="clean test ImageSet folder"),
    poisoned: Path = typer.Option(..., "--poisoned", help="triggered non-target test ImageSet folder"),
    purifier: Path = typer.Option(None, "--purifier", help="purifier folder (needed by diffusion defenses)"),
    target: int = typer.Option(None, "--target", help="attack target label (default: attack.target)"),
    defenses: str = typer.Option(
        "none,sampdetox,sampdetox-ddim,faithful,faithful-ddim,stage1,noise*,noising,shrinkpad,blur",
        "--defenses",
        help="comma-separated defense names; a suffix -ddim / -ddimN (stride N) / -ddpm picks the sampler",
    ),
    limit: int = typer.Option(None, "--limit", help="score at most N clean and N triggered images"),
    out: Path = typer.Option(None, "--out", "-o", help="write the rows as JSON here"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    params: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """CA / PA / ASR (and trigger-map AUC) of the victim behind each defense."""
    from detoxops.defenses.catalog import build_defense
    from detoxops.defenses.evaluation import EvalSet, evaluate_defenses

    p = params_from_cli(params, overrides)
    names = [n.strip() for n in defenses.split(",") if n.strip()]
    pur = _load_purifier(purifier) if purifier is not None else None
    try:
        built = {n: build_defense(n, pur, p.sampdetox) for n in names}
    except ValueError as exc:
        fail(str(exc))
        return
    clean_set, poisoned_set = _load_imageset(clean, "clean"), _load_imageset(poisoned, "poisoned")
    tgt = p.attack.target if target is None else target
    try:
        data = EvalSet.from_imagesets(clean_set, poisoned_set, tgt, name=poisoned.name)
    except ValueError as exc:
        fail(str(exc))
        return
    if limit is not None:
        data = data.subset(
            np.arange(min(limit, len(data.clean_images))), np.arange(min(limit, len(data.poisoned_images)))
        )
    rows = evaluate_defenses(_load_victim(victim), built, data, p.sampdetox.batch_size, progress)
    typer.echo(f"{'defense':<22}{'CA':>8}{'PA':>8}{'ASR':>8}{'AUC':>8}{'img/s':>9}")
    for r in rows:
        auc = r.get("map_auc", float("nan"))
        typer.echo(
            f"{r['defense']:<22}{r['ca']:8.2f}{r['pa']:8.2f}{r['asr']:8.2f}{auc:8.3f}{r['images_per_s']:9.1f}"
        )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2))
        typer.echo(f"wrote {out}")
