"""`detoxops detox` commands: detoxify a stored image set (SampDetox), and score defenses (CA / PA / ASR)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from detoxops.commands._common import fail, params_from_cli
from detoxops.commands._options import PARAMS_OPTION, PROGRESS_OPTION, PURIFIER_OPTION, SET_OPTION

detox_app = typer.Typer(
    help="Inference-time sample detoxification (SampDetox) and its evaluation.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(detox_app, name="detox")


def _load_purifier(path: Path, precision: str = "auto"):
    from detoxops.diffusion import load_purifier

    if not path.exists():
        fail(f"purifier not found: {path}")
    return load_purifier(path, precision=precision)


def _load_imageset(path: Path, what: str):
    from detoxops.data import ImageSet

    if not path.exists():
        fail(f"{what} image set not found: {path}")
    try:
        return ImageSet.load(path)
    except (ValueError, FileNotFoundError) as exc:
        fail(f"{what} image set {path}: {exc}")


def _load_victim(victim: str):
    """``--victim``: an http(s) URL is kept as it is (the guard's client talks to it), anything else is loaded as a
    classifier folder or victim-store name; an unloadable one fails with the reason."""
    if victim.startswith(("http://", "https://")):
        return victim
    from detoxops.models import load_classifier

    try:
        return load_classifier(victim)
    except (FileNotFoundError, ValueError) as exc:
        fail(f"--victim {victim}: {exc}")


@detox_app.command("score")
def score_command(
    poisoned: Path = typer.Option(..., "--poisoned", help="output folder of `detoxops attack run`"),
    victim: Path = typer.Option(..., "--victim", help="classifier folder (`detoxops victim train`)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for defenses.csv and metrics.json"),
    split: str = typer.Option("val", "--split", help="val (parameter selection) or test (held out)"),
    defenses: str = typer.Option("none,sampdetox", "--defenses", help="comma-separated catalog names"),
    clean: str = typer.Option(None, "--clean", help="data source of the clean test split (default: data.source), "
                              "e.g. the ingest stage's pipeline/raw"),
    purifier: Path = PURIFIER_OPTION,
    max_images: int = typer.Option(0, "--max-images", help="clean / triggered images at most (0 = all)"),
    params_path: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """CA / PA / ASR of the victim behind each defense on the ``val`` or held-out ``test`` part of the test split,
    with ``params.sampdetox`` as it is (the ``detox_eval`` stage; one SampDetox setting with the sweep's rule and
    held-out check: ``detox sweep --point``, the ``sweep_point`` stage)."""
    params = params_from_cli(params_path, overrides)
    import torch

    from detoxops.data import ImageSet, load_splits
    from detoxops.models import load_classifier
    from detoxops.operations import evaluate_split

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    names = [d.strip() for d in defenses.split(",") if d.strip()]
    try:
        record = json.loads((poisoned / "attack.json").read_text())
        test = load_splits(clean or params.data.source, params.data, progress=False)["test"]
        outcome = evaluate_split(test, ImageSet.load(poisoned / "test"), record["target"], load_classifier(victim),
                                 params, split, names, attack_name=record.get("name", params.attack.name),
                                 purifier=purifier, max_images=max_images or None, out=out)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(outcome.metrics(), indent=2))


@detox_app.command("sweep")
def sweep_command(
    poisoned: list[Path] = typer.Option(..., "--poisoned", help="output folder of `detoxops attack run`, one per "
                                        "attack (repeatable; paired in order with --victim)"),
    victim: list[Path] = typer.Option(..., "--victim", help="classifier folder trained on that poisoned set "
                                      "(repeatable)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for sweep_result.json (fractions), sweep.md, "
                             "metrics.json and sweep.csv (percent)"),
    grid: list[str] = typer.Option(None, "--grid", help="axis, e.g. sampdetox.t2=80,120 (repeatable; default: "
                                   "params.sweep.grid)"),
    point: bool = typer.Option(False, "--point", help="no grid: score params.sampdetox as it is (one point, "
                               "'params') against no defense; `dvc exp run sweep_point -S sampdetox.t2=80`"),
    max_ca_drop: float = typer.Option(None, "--max-ca-drop", help="the rule's bound on the mean CA drop, in points "
                                      "(default: sweep.max_ca_drop)"),
    clean: str = typer.Option(None, "--clean", help="data source of the clean test split (default: data.source), "
                              "e.g. the ingest stage's pipeline/raw"),
    purifier: Path = PURIFIER_OPTION,
    max_images: int = typer.Option(0, "--max-images", help="clean / triggered images per split and attack at most "
                                   "(0 = all)"),
    params_path: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """The SampDetox sweep (``detoxops.operations.sweep``, the same as ``python -m flows.sweep`` without Prefect and
    MLflow): every grid point and no defense on each attack's ``val`` split, the setting chosen by the rule (lowest
    mean ASR with a mean CA drop <= --max-ca-drop points), then checked on the held-out ``test`` split."""
    params = params_from_cli(params_path, overrides)
    if len(poisoned) != len(victim):
        fail(f"{len(poisoned)} --poisoned folders but {len(victim)} --victim folders: give one victim per attack")
    if point and grid:
        fail("--point scores params.sampdetox as it is: give it or --grid, not both")
    import torch

    from detoxops.attacks import registry
    from detoxops.data import ImageSet, load_splits
    from detoxops.models import load_classifier
    from detoxops.operations.sweep import SweepCase, local_scorer, parse_grid_args, sweep

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    try:
        test = load_splits(clean or params.data.source, params.data, progress=False)["test"]
        cases: dict[str, SweepCase] = {}
        for folder, model in zip(poisoned, victim, strict=True):
            attack = registry.from_record(folder)
            if attack.name in cases:
                raise ValueError(f"{folder}: attack {attack.name!r} given twice")
            cases[attack.name] = SweepCase(attack.name, test, ImageSet.load(folder / "test"), attack.target,
                                           load_classifier(model), attack)
        score = local_scorer(cases, params, purifier=purifier, max_images=max_images or None)
        axes = parse_grid_args(grid) if grid else None  # None: params.sweep.grid
        outcome = sweep(params, list(cases), score, grid={} if point else axes, max_ca_drop=max_ca_drop, out=out)
    except (FileNotFoundError, ValueError, KeyError) as exc:  # ConfigError is a ValueError
        fail(str(exc))
    typer.echo(outcome.markdown())
    typer.echo(f"\nwrote {outcome.result_json}, {outcome.markdown_md}, {outcome.metrics_json} and "
               f"{outcome.summary_csv}")
    typer.echo("apply with: " + " ".join(f"--set {o}" for o in outcome.overrides))


@detox_app.command("run")
def run_command(
    images: Path = typer.Argument(..., help="a saved ImageSet folder (images.npy, labels.npy, meta.json)"),
    purifier: Path = typer.Option(..., "--purifier", help="diffusers UNet folder of the purifier"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the detoxified ImageSet (+ maps.npz)"),
    defense: str = typer.Option("sampdetox", "--defense", help="defense name, see detoxops.defenses.catalog"),
    limit: int = typer.Option(None, "--limit", help="only the first N images"),
    victim: str = typer.Option(None, "--victim", help="classifier (folder, victim-store name or http URL) queried as "
                               "a black box by defenses that need it (sampdetox.patch.confirm: label)"),
    progress: bool = PROGRESS_OPTION,
    params: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """Detoxify IMAGES and save them as a new ImageSet, with the trigger maps and noise levels."""
    from detoxops.defenses.catalog import build_defense
    from detoxops.defenses.guard import Detoxifier

    p = params_from_cli(params, overrides)
    cfg = p.sampdetox
    src = _load_imageset(images, "input")
    if limit is not None:
        src = src.subset(np.arange(min(limit, len(src))))
    classifier = _load_victim(victim) if victim is not None else None
    try:
        d = build_defense(defense, _load_purifier(purifier, p.diffusion.precision), cfg, classifier=classifier,
                          baselines=p.baselines)
    except ValueError as exc:
        fail(str(exc) + ("" if victim else " (detox run: --victim)") if "classifier" in str(exc) else str(exc))
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
    # the settings the defense ran with (a named variant such as `repair` has its own profile), not params' alone
    used = getattr(d, "cfg", None)
    used = used if hasattr(used, "model_dump") else cfg.resolved()
    result = src.replace(images=detoxed).with_transform(
        {"op": "detox", "defense": defense, **used.model_dump(mode="json")}
    )
    saved = result.save(out, overwrite=True)
    if maps:
        np.savez_compressed(Path(saved) / "maps.npz", **{k: np.concatenate(v) for k, v in maps.items()})
    typer.echo(f"{saved}: {len(result)} images detoxified with {defense} ({getattr(d, 'name', defense)})")


@detox_app.command("calibrate")
def calibrate_command(
    images: Path = typer.Argument(..., help="a saved ImageSet of clean images from the deployment domain, kept apart "
                                  "from the images you evaluate on (e.g. a validation split)"),
    purifier: Path = typer.Option(..., "--purifier", help="diffusers UNet folder of the purifier"),
    out: Path = typer.Option(None, "--out", "-o", help="calibration file (default: PURIFIER/patch_calibration.json, "
                             "where the repair finds it)"),
    limit: int = typer.Option(None, "--limit", help="only the first N images (100 is enough for the default rates)"),
    batch: int = typer.Option(25, "--batch", help="images per purifier call (each is masked 16 times)"),
    progress: bool = PROGRESS_OPTION,
    params: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """Calibrate the patch repair (profile ``repair``) for a purifier: the context maps of clean images give the
    gate and region thresholds at any clean fire rate (``sampdetox.patch.fire_rate`` / ``pixel_rate``)."""
    from detoxops.defenses.patch_repair import CALIBRATION_FILE, calibrate_on_images

    p = params_from_cli(params, overrides)
    cfg = p.sampdetox.patch
    src = _load_imageset(images, "clean")
    if limit is not None:
        if limit < 2:
            fail(f"--limit must be at least 2 (a calibration needs 2 images), got {limit}")
        src = src.subset(np.arange(min(limit, len(src))))
    pur = _load_purifier(purifier, p.diffusion.precision)
    target = out if out is not None else purifier / CALIBRATION_FILE
    try:
        calibration = calibrate_on_images(
            pur, np.asarray(src.images), cfg, batch_size=batch, seed=p.sampdetox.seed, progress=progress,
            meta={"images_from": str(images), "purifier": str(purifier),
                  "data_version": src.content_hash()})
        gate, pixel = calibration.thresholds(cfg.model_copy(update={"gate_threshold": None, "pixel_threshold": None}))
    except ValueError as exc:
        fail(str(exc))
        return
    calibration.save(target)
    typer.echo(f"{target}: {len(src)} clean images; at fire_rate {cfg.fire_rate} the gate is {gate:.4f}, at "
               f"pixel_rate {cfg.pixel_rate} the pixel threshold is {pixel:.4f}")


@detox_app.command("drift")
def drift_command(
    images: Path = typer.Argument(..., help="a saved ImageSet of clean images from the deployment domain (labels "
                                  "are not used)"),
    victim: str = typer.Option(..., "--victim", help="the classifier behind the defense (folder, victim-store name "
                               "or http URL of a served model)"),
    purifier: Path = typer.Option(..., "--purifier", help="diffusers UNet folder of the purifier"),
    defense: str = typer.Option("sampdetox", "--defense", help="defense name, see detoxops.defenses.catalog"),
    limit: int = typer.Option(None, "--limit", help="only the first N images (100 resolve a 10-point inflow)"),
    max_inflow: float = typer.Option(None, "--max-inflow", help="flag at this net inflow into one class "
                                     "(share, default 0.10)"),
    out: Path = typer.Option(None, "--out", "-o", help="write the drift report (JSON) here"),
    fail_on_flag: bool = typer.Option(False, "--fail-on-flag", help="exit with status 3 when the drift is flagged "
                                      "(for a deployment gate)"),
    progress: bool = PROGRESS_OPTION,
    params: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """Does the defense move the classifier's labels of clean images towards one class? A defense that fires a
    backdoor itself (measured: the LF, Refool and LIRA victims trained on a JPEG source, which read the restorations'
    faint noise as their trigger) sends clean inputs to the target: this check names the class before you deploy
    (detoxops.defenses.drift)."""
    from detoxops.defenses.catalog import build_defense
    from detoxops.defenses.guard import Detoxifier
    from detoxops.fileio import atomic_write_text

    p = params_from_cli(params, overrides)
    if max_inflow is not None and not 0.0 < max_inflow <= 1.0:
        fail(f"--max-inflow: max_inflow must be in (0, 1], got {max_inflow}")
    src = _load_imageset(images, "clean")
    if limit is not None:
        src = src.subset(np.arange(min(limit, len(src))))
    classifier = _load_victim(victim)
    guard = Detoxifier(classifier, None, p.sampdetox.batch_size, progress=progress)
    try:
        guard.defense = build_defense(defense, _load_purifier(purifier, p.diffusion.precision), p.sampdetox,
                                      classifier=classifier, baselines=p.baselines)
        drift = guard.check_drift(np.asarray(src.images), len(src.class_names), max_inflow)
    except ValueError as exc:
        fail(str(exc))
        return
    used = getattr(guard.defense, "cfg", None)
    record = drift.to_dict() | {
        "images": str(images), "data_version": src.content_hash(), "victim": victim, "purifier": str(purifier),
        "defense": defense, "settings": (used if hasattr(used, "model_dump") else p.sampdetox.resolved()).model_dump(
            mode="json"), "seed": p.sampdetox.seed, "class_names": list(src.class_names)}
    if out is not None:
        atomic_write_text(out, json.dumps(record, indent=1))
    typer.echo(drift.describe(list(src.class_names)))
    if fail_on_flag and drift.flagged:
        raise typer.Exit(3)


@detox_app.command("eval")
def eval_command(
    model: str = typer.Option(
        ..., "--model", "--victim",
        help="the classifier: a detoxops classifier folder, an .onnx file, or an http(s):// endpoint (MLflow's "
        "/invocations, or the guard's protocol); TorchScript / pickles only with --allow-unsafe-model",
    ),
    clean: Path = typer.Option(
        ..., "--clean", help="clean test images: a class-folder tree, .tar.gz / .zip, saved ImageSet, stored "
        "dataset version or .npz, read whole"
    ),
    triggered: Path = typer.Option(
        ..., "--triggered", "--poisoned",
        help="triggered test images, in any form --clean takes; may lack any class (target-class images are dropped)",
    ),
    purifier: Path = PURIFIER_OPTION,
    target: str = typer.Option(
        None, "--target", help="attack target: class index or class name (default: the one class the triggered "
        "images lack)"
    ),
    defenses: str = typer.Option(
        "none,sampdetox,sampdetox-ddim,faithful,faithful-ddim,stage1,noise*,noising,shrinkpad,blur",
        "--defenses",
        help="comma-separated defense names; a suffix -ddim / -ddimN (stride N) / -ddpm picks the sampler",
    ),
    image_size: int = typer.Option(
        None, "--image-size", min=4, help="evaluate at this size (default: the model's input size where it says)"
    ),
    resize: bool = typer.Option(
        True, "--resize/--no-resize", help="resize images of another size to the model's (a note says so); "
        "--no-resize refuses them, naming the sizes"
    ),
    allow_unsafe_model: bool = typer.Option(
        False, "--allow-unsafe-model", help="allow TorchScript / pickled torch models, which run code when loaded: "
        "only for a file you trust"
    ),
    input_range: str = typer.Option(
        "0-1", "--input-range", help="pixel range a float ONNX / TorchScript input expects: 0-1 or 0-255"
    ),
    http_protocol: str = typer.Option(
        "auto", "--http-protocol", help="auto (MLflow when the URL ends in /invocations, else the guard's), mlflow, "
        "guard"
    ),
    limit: int = typer.Option(None, "--limit", min=1, help="score at most N clean and N triggered images"),
    out: Path = typer.Option(None, "--out", "-o", help="write the settings, notes and rows as JSON here"),
    progress: bool = PROGRESS_OPTION,
    params: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """CA / PA / ASR (and trigger-map AUC) of a classifier behind each defense, on your clean and triggered images."""
    from detoxops.defenses.byo import byo_defenses, prepare_byo
    from detoxops.defenses.catalog import needs_purifier
    from detoxops.defenses.evaluation import evaluate_defenses
    from detoxops.metrics import percent_rates
    from detoxops.models.external import load_model

    p = params_from_cli(params, overrides)
    names = [n.strip() for n in defenses.split(",") if n.strip()]
    if not names:
        fail("--defenses is empty", code=2)
    try:
        loaded = load_model(model, allow_unsafe=allow_unsafe_model, input_range=input_range,
                            http_protocol=http_protocol)
        pur = _load_purifier(purifier, p.diffusion.precision) if purifier is not None and needs_purifier(names) else None
        plan = prepare_byo(
            clean, triggered, target=target, model_size=loaded.input_size, model_classes=loaded.class_names,
            model_num_classes=loaded.num_classes, image_size=image_size,
            purifier_size=pur.image_size if pur is not None else None, resize=resize, progress=progress,
            limits=p.data.limits,
        )
        built, purifier_origin = byo_defenses(names, plan.image_size, p.sampdetox, pur, p.diffusion.purifier,
                                              classifier=loaded.classifier, baselines=p.baselines,
                                              precision=p.diffusion.precision)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        fail(str(exc))
        return
    # a seeded spread over the set (the first N of a class-sorted tree would be few classes): EvalSet.at_most, the
    # sample the flow's --max-images takes too
    data = plan.data.at_most(limit, p.sampdetox.seed)
    typer.echo(f"model     {loaded.description}")
    typer.echo(f"clean     {len(data.clean_images)} images from {plan.clean_origin}")
    typer.echo(f"triggered {len(data.poisoned_images)} images from {plan.triggered_origin}")
    if needs_purifier(names):
        typer.echo(f"purifier  {purifier_origin}")
    for note in plan.notes:
        typer.echo(f"note: {note}")
    try:
        rows = [percent_rates(r) for r in evaluate_defenses(loaded.classifier, built, data, p.sampdetox.batch_size,
                                                            progress)]  # the printed and stored table: percent
    except (RuntimeError, ValueError) as exc:  # an endpoint that fails or answers nonsense
        fail(f"{loaded.kind} model {loaded.source}: {exc}")
        return
    typer.echo(f"{'defense':<22}{'CA':>8}{'PA':>8}{'ASR':>8}{'AUC':>8}{'img/s':>9}")
    for r in rows:
        auc = r.get("map_auc", float("nan"))
        typer.echo(
            f"{r['defense']:<22}{r['ca']:8.2f}{r['pa']:8.2f}{r['asr']:8.2f}{auc:8.3f}{r['images_per_s']:9.1f}"
        )
    if out is not None:
        record = {
            "model": {"source": loaded.source, "kind": loaded.kind, "description": loaded.description,
                      "digest": loaded.digest},
            "clean": plan.clean_origin, "triggered": plan.triggered_origin,
            "target": plan.target, "target_name": plan.target_name, "class_names": plan.class_names,
            "image_size": list(plan.image_size), "dropped_target_images": plan.dropped_target_images,
            "notes": plan.notes, "sampdetox": p.sampdetox.resolved().model_dump(mode="json"), "rows": rows,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2))
        typer.echo(f"wrote {out}")
