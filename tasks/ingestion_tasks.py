"""Ingestion checks: resolve a (possibly DVC-tracked) source, record the verdict next to the data version,
publish it as MLflow artifacts and Prefect artifacts.

The verdict of a check lives in three places:

* **next to the DVC version**: ``<root>/<name>/<hash12>.check.json`` beside ``<hash12>/`` and ``<hash12>.dvc``
  (a sibling file, so the version's content and DVC hash stay untouched; commit it with the ``.dvc`` file);
  ``status`` is ``quarantined`` or ``passed``, with the target label, the anomaly indices, the purified
  version and the runs that produced it. :func:`check_status` reads it back for downstream gates;
* **MLflow**: a run tagged ``detoxops.kind=ingestion`` / ``detoxops.status`` / ``detoxops.target_label``
  (what the dashboard's Overview reads), with ``anomaly/anomaly_index.{json,png}`` and
  ``decisions/decisions.csv``;
* **Prefect**: a markdown report and a per-label table artifact on the flow run (key
  ``ingestion-check-<dataset>``), and the flow run's final state (Failed when quarantined).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task

from tasks import PROJECT_ROOT

if TYPE_CHECKING:
    from detoxops.config import Params

__all__ = [
    "resolve_source",
    "find_dvc_root",
    "marker_path",
    "write_check_marker",
    "check_status",
    "anomaly_rows",
    "anomaly_figure",
    "log_dataelixir_artifacts",
    "params_as_run",
    "check_markdown",
    "publish_check_artifacts",
    "artifact_key",
    "default_dvc_root",
    "version_best_effort",
    "check_targets",
    "record_ingestion_check",
    "record_failed_check",
    "trainability_problems",
    "refuse_untrainable",
    "purifier_for_check",
    "PurifierUnavailable",
    "UntrainableDataset",
    "MIN_CLASSES",
    "MIN_TRAIN_PER_CLASS",
]

CHECK_SUFFIX = ".check.json"
MIN_CLASSES = 3
"""DataElixir's target-label test ranks labels against each other (a MAD anomaly index): with two labels each
index is ±0.67 whatever the data, below any threshold, so a two-class set could never be found poisoned."""
MIN_TRAIN_PER_CLASS = 10
"""Training images per class below which neither the victim DataElixir needs nor its per-label statistics mean
anything."""


class PurifierUnavailable(RuntimeError):
    """No purifier for the data's image size; the message gives the commands that make or choose one."""


class UntrainableDataset(ValueError):
    """A dataset the check cannot train on (too few classes or images per class); refused before versioning."""


# ------------------------------------------------------------------------------------ what the data is
def trainability_problems(class_counts: dict[str, int], class_names: list[str]) -> list[str]:
    """Why the check cannot train on a training split with these per-class counts ([] when it can)."""
    problems = []
    if len(class_names) < MIN_CLASSES:
        problems.append(f"{len(class_names)} class(es) ({', '.join(class_names) or 'none'}); the check needs at least "
                        f"{MIN_CLASSES}: DataElixir finds a backdoor target by comparing labels with each other")
    few = {name: n for name, n in class_counts.items() if n < MIN_TRAIN_PER_CLASS}
    if few:
        shown = ", ".join(f"{k!r}: {v}" for k, v in sorted(few.items(), key=lambda kv: kv[1])[:5])
        more = f" and {len(few) - 5} more" if len(few) > 5 else ""
        problems.append(f"too few training images in {len(few)} class(es) ({shown}{more}); the check needs at least "
                        f"{MIN_TRAIN_PER_CLASS} per class to train the model DataElixir uses")
    return problems


@task(name="validate-before-versioning")
def refuse_untrainable(ingested: dict[str, Any], created: bool) -> None:
    """Refuse (``UntrainableDataset``) a version the check cannot train on, before it is DVC-versioned; a version
    folder this run just created is removed again, so nothing of a refused dataset stays stored."""
    import shutil

    info = ingested.get("info") or {}
    names = list(info.get("class_names") or [])
    train = (info.get("splits") or {}).get("train") or {}
    counts = train.get("class_counts")
    if counts is None:
        from detoxops.data import load_version

        ds = load_version(ingested["path"])["train"]
        names, counts = list(ds.class_names), [int(c) for c in ds.class_counts()]
    by_name = dict(zip(names, (int(c) for c in counts), strict=False)) if isinstance(counts, list) else dict(counts)
    problems = trainability_problems(by_name, names)
    if problems:
        if created:
            shutil.rmtree(ingested["path"], ignore_errors=True)
        raise UntrainableDataset(f"dataset {ingested['name']} refused before versioning: " + "; ".join(problems))


def purifier_for_check(params: Params, image_size: int) -> tuple[str, str]:
    """``(folder, origin)`` of DataElixir's purifier for ``image_size`` images under ``params``
    (:func:`detoxops.operations.dataelixir_purifier`: a configured one must match the size), else the one shipped
    for that size; otherwise :class:`PurifierUnavailable` with the commands that train one or choose a shipped size.
    A check never trains a purifier on the data it checks: a purifier trained on poisoned images learns to
    reproduce their trigger."""
    from detoxops.config import DiffusionConfig
    from detoxops.diffusion.unet import SHIPPED_PURIFIERS, shipped_purifier_dir
    from detoxops.operations import choose_purifier as choose_purifier_folder
    from detoxops.operations import dataelixir_purifier
    from detoxops.operations.purifier import PurifierSizeError

    configured = dataelixir_purifier(params, image_size)
    try:
        folder, origin = choose_purifier_folder(None, DiffusionConfig(purifier=configured), image_size)
        return str(folder), origin
    except PurifierSizeError as exc:
        raise PurifierUnavailable(f"diffusion.{exc}; use a purifier of that size or --set data.image_size={exc.size}"
                                  ) from None
    except ValueError as exc:  # a shipped purifier named for another size
        raise PurifierUnavailable(str(exc)) from None
    except FileNotFoundError:
        if configured:  # a configured folder that is missing: the rule's own message
            raise
    shipped = [f"{name} ({size}x{size})" for name, size in SHIPPED_PURIFIERS.items()
               if (shipped_purifier_dir(name) / "config.json").is_file()]
    sizes = sorted({size for size in SHIPPED_PURIFIERS.values()})
    out = f"purifiers/{image_size}px"
    raise PurifierUnavailable(
        f"no purifier for {image_size}x{image_size} images (shipped: {', '.join(shipped) or 'none'}). Either\n"
        f"  1. train one on clean images of this kind — not on the data under check, a purifier learns to "
        f"reproduce what it is shown, triggers included:\n"
        f"       .venv/bin/detoxops diffusion train --data CLEAN_DATA --out {out} "
        f"--set data.image_size={image_size}\n"
        f"     then run the check with --set diffusion.purifier={out}; or\n"
        f"  2. resize the data to a shipped size: --set data.image_size={sizes[-1] if sizes else 32}"
    )


# ------------------------------------------------------------------------------------------------ source
def find_dvc_root(path: str | Path) -> Path | None:
    """The nearest folder at or above ``path`` that holds a ``.dvc/`` repo, or None."""
    path = Path(path).resolve()
    for candidate in (path, *path.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    return None


def _dvc_out(dvc_file: Path) -> Path:
    import yaml

    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []
    if len(outs) != 1 or not outs[0].get("path"):
        raise ValueError(f"{dvc_file}: expected exactly one output in a .dvc file, found {len(outs)}")
    return (dvc_file.parent / outs[0]["path"]).resolve()


@task(name="resolve-source", retries=2, retry_delay_seconds=[2, 10])
def resolve_source(source: str) -> str:
    """The path (or builtin name) to ingest. A ``.dvc`` file, or a DVC-tracked path (one with a sibling
    ``<path>.dvc``) that is missing from the workspace, is pulled from the repo's default remote first
    (``dvc pull``; a plain ``checkout`` when the cache already has it)."""
    text = str(source)
    path = Path(text).expanduser()
    dvc_file = None
    if text.endswith(".dvc") and path.is_file():
        dvc_file = path.resolve()
    elif not path.exists() and Path(text + ".dvc").is_file():
        dvc_file = Path(text + ".dvc").resolve()
    if dvc_file is None:
        return str(path.resolve()) if path.exists() else text
    target = _dvc_out(dvc_file)
    if not target.exists():
        from dvc.repo import Repo

        root = find_dvc_root(dvc_file.parent)
        if root is None:
            raise FileNotFoundError(f"{dvc_file} is not inside a DVC repository (no .dvc/ above it)")
        with Repo(str(root), _wait_for_lock=True) as repo:
            repo.pull(targets=[str(dvc_file)])
        if not target.exists():
            raise FileNotFoundError(f"dvc pull of {dvc_file} did not produce {target}")
    return str(target)


# ------------------------------------------------------------------------------------------------ marker
def marker_path(version: str | Path) -> Path:
    """``<root>/<name>/<hash12>.check.json`` — beside the version folder and its ``.dvc`` file."""
    version = Path(version)
    return version.with_name(version.name + CHECK_SUFFIX)


def write_check_marker(version: str | Path, record: dict[str, Any]) -> Path:
    """Write the latest check of ``version`` next to it (atomically) and return the marker's path."""
    path = marker_path(version)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def check_status(version: str | Path) -> dict[str, Any] | None:
    """The recorded verdict of the latest ingestion check of ``version`` (None when never checked).

    ``check_status(v)["status"] == "quarantined"`` is the gate for downstream jobs that must not train on it.
    """
    path = marker_path(version)
    return json.loads(path.read_text()) if path.is_file() else None


# ------------------------------------------------------------------------------------------ anomaly index
def anomaly_rows(anomaly: dict[str, Any] | None, class_names: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per label: the KL / count metrics, their MAD anomaly indices, their mean (the default
    ``target_rule``) and whether the label was detected as a target."""
    if not anomaly or not anomaly.get("kl"):
        return []
    targets = set(anomaly.get("target_labels") or [])
    rows = []
    for label, (kl, count, kl_idx, count_idx) in enumerate(
        zip(anomaly["kl"], anomaly["count"], anomaly["kl_index"], anomaly["count_index"], strict=True)
    ):
        rows.append({
            "label": label,
            "class": class_names[label] if class_names and label < len(class_names) else str(label),
            "kl": round(float(kl), 4),
            "count": int(count),
            "kl_index": round(float(kl_idx), 2),
            "count_index": round(float(count_idx), 2),
            "mean_index": round((float(kl_idx) + float(count_idx)) / 2.0, 2),
            # anomalous samples of the label, gated by dataelixir.min_target_share (absent in older records)
            "anomalous_samples": int(anomaly["support"][label]) if anomaly.get("support") else None,
            "target": label in targets,
        })
    return rows


def anomaly_figure(anomaly: dict[str, Any], threshold: float, path: str | Path, title: str = "") -> Path:
    """Bar chart of the KL and count anomaly indices per label with the detection threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = anomaly_rows(anomaly)
    labels = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(labels - 0.2, [r["kl_index"] for r in rows], width=0.4, label="KL index")
    ax.bar(labels + 0.2, [r["count_index"] for r in rows], width=0.4, label="count index")
    ax.axhline(threshold, color="red", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    for r in rows:
        if r["target"]:
            ax.annotate("target", (r["label"], max(r["kl_index"], r["count_index"])), ha="center", va="bottom",
                        color="red", fontsize=8)
    ax.set_xticks(labels)
    ax.set_xlabel("label")
    ax.set_ylabel("MAD anomaly index")
    ax.set_title(title or "DataElixir anomaly index per label", fontsize=9)
    ax.legend(fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def params_as_run(params, sanitized: dict[str, Any] | None, victim: dict[str, Any] | None = None) -> dict[str, Any]:
    """``params`` as a run's MLflow params, with what ran in place of what was asked for: the ``dataelixir`` section
    with its profile resolved for the purifier's image size (the candidate fields asked for may be ``None`` = the
    profile's), and ``victim.arch`` as trained (``auto`` resolved for the data)."""
    out = params.to_dict()
    if sanitized and sanitized.get("dataelixir"):
        out["dataelixir"] = dict(sanitized["dataelixir"])
    if victim and victim.get("arch"):
        out["victim"] = {**out["victim"], "arch": victim["arch"]}
    return out


def log_dataelixir_artifacts(sanitized: dict[str, Any], threshold: float, staging: str | Path) -> None:
    """On the active MLflow run: ``decisions/decisions.csv``, ``anomaly/anomaly_index.json`` and
    ``anomaly/anomaly_index.png`` (the conventions the dashboard reads)."""
    import mlflow

    staging = Path(staging)
    if sanitized.get("decisions") and Path(sanitized["decisions"]).is_file():
        mlflow.log_artifact(sanitized["decisions"], "decisions")
    anomaly = sanitized.get("anomaly_index")
    if anomaly:
        folder = staging / "anomaly"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "anomaly_index.json").write_text(json.dumps(anomaly, indent=1))
        anomaly_figure(anomaly, threshold, folder / "anomaly_index.png")
        mlflow.log_artifacts(str(folder), "anomaly")


# ------------------------------------------------------------------------------------- Prefect artifacts
def artifact_key(dataset: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9]+", "-", dataset.lower()).strip("-") or "dataset"
    return f"ingestion-check-{slug}"[:100]


def check_markdown(record: dict[str, Any]) -> str:
    """The human-readable report of one check (also the Prefect markdown artifact)."""
    if record["status"] == "failed":
        return _failed_markdown(record)
    quarantined = record["status"] == "quarantined"
    lines = [
        f"# Ingestion check: `{record['dataset']}` — **{record['status'].upper()}**",
        "",
        ("Poisoning detected: DataElixir found an outlying label, the likely **backdoor target "
         f"{record['target_labels']}**. The version is quarantined; do not train on it. A purified version was "
         "recorded next to it." if quarantined else
         "No target label found: the dataset looks clean (no label's anomaly index exceeds the threshold)."),
        "",
        "| | |",
        "|---|---|",
        f"| source | `{record['source']}` |",
        f"| data version | `{record['version']}` (DVC `{record.get('dvc_md5') or '-'}`) |",
        f"| finding | {'backdoor target label(s) ' + str(record['target_labels']) if quarantined else 'clean'} |",
        f"| training images | {record['counts'].get('train', '-')} |",
        f"| flagged (label restored) | {record['counts'].get('flagged', '-')} |",
    ]
    if record.get("image_size"):
        lines.append(f"| images | {record['image_size']} |")
    if record.get("purifier_origin"):
        lines.append(f"| purifier | `{record['purifier_origin']}` |")
    for name, value in (record["counts"].get("sets") or {}).items():
        lines.append(f"| DataElixir set `{name}` | {value} |")
    if quarantined:
        lines.append(f"| purified version | `{record.get('purified_version') or '-'}` "
                     f"(DVC `{record.get('purified_dvc_md5') or '-'}`) |")
    lines.append(f"| marker | `{record.get('marker') or '-'}` |")
    lines.append(f"| MLflow run | `{record.get('mlflow_run_id') or '-'}` |")
    rows = record.get("anomaly_rows") or []
    if rows:
        lines += ["", f"## Anomaly index per label (threshold {record.get('threshold')}, rule "
                      f"`{record.get('target_rule')}`)", "",
                  "| label | KL | count | KL index | count index | mean index | target |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['class']} | {r['kl']} | {r['count']} | {r['kl_index']} | {r['count_index']} | "
                         f"{r['mean_index']} | {'**yes**' if r['target'] else ''} |")
    lines += _stages_markdown(record)
    return "\n".join(lines) + "\n"


def _stages_markdown(record: dict[str, Any]) -> list[str]:
    stages = record.get("stages") or {}
    if not stages:
        return []
    lines = ["", "## What the check did", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in stages.items()]
    lines.append(f"| **total** | {sum(stages.values()):.1f} |")
    return lines


def _failed_markdown(record: dict[str, Any]) -> str:
    lines = [
        f"# Ingestion check: `{record['dataset']}` — **FAILED**",
        "",
        "The check did not reach a verdict: the dataset is neither passed nor quarantined. Reason:",
        "",
        "```",
        str(record.get("reason") or "unknown"),
        "```",
        "",
        "| | |",
        "|---|---|",
        f"| source | `{record['source']}` |",
        f"| error | `{record.get('error_type') or '-'}` |",
        f"| data version | `{record.get('version') or '- (not ingested)'}` |",
        f"| marker | `{record.get('marker') or '-'}` |",
        f"| MLflow run | `{record.get('mlflow_run_id') or '-'}` |",
    ]
    lines += _stages_markdown(record)
    return "\n".join(lines) + "\n"


def publish_check_artifacts(record: dict[str, Any]) -> dict[str, str]:
    """A markdown report and a per-label table artifact on the current flow run; returns their ids."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = artifact_key(record["dataset"])
    ids = {
        "markdown": str(create_markdown_artifact(
            markdown=check_markdown(record), key=key,
            description=f"Ingestion check of {record['dataset']}: {record['status']}"[:2000],
        )),
    }
    if record.get("anomaly_rows"):
        ids["table"] = str(create_table_artifact(
            table=record["anomaly_rows"], key=f"{key}-anomaly"[:100],
            description=f"DataElixir anomaly index per label ({record['status']})",
        ))
    return ids


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def default_dvc_root(data_root: str | Path) -> Path:
    """The DVC repo a data root belongs to: the nearest ``.dvc/`` above it, else the project."""
    return find_dvc_root(data_root) or PROJECT_ROOT


def version_best_effort(path: str, dvc_root: str | None, remote: str) -> dict[str, Any] | None:
    """DVC-version ``path`` as the demo does: best effort (the content hash still identifies the data). A path
    outside the DVC repository is skipped at once rather than through the task's retries."""
    from tasks.data_tasks import version_dataset

    root = Path(dvc_root).resolve() if dvc_root else default_dvc_root(path)
    if root not in Path(path).resolve().parents:
        print(f"DVC versioning of {path} skipped: outside the DVC repository {root} (see --dvc-root)")
        return None
    try:
        return version_dataset(path, str(root), remote)
    except Exception as exc:  # noqa: BLE001 - any DVC failure leaves the flow running on the content hash
        print(f"DVC versioning of {path} skipped: {exc}")
        return None


# ------------------------------------------------------------------------------------------------ record
def check_targets(sanitized: dict[str, Any]) -> list[int]:
    """The backdoor target label(s) a DataElixir result found ([] when the data looks clean)."""
    anomaly = sanitized.get("anomaly_index") or {}
    targets = [int(t) for t in anomaly.get("target_labels") or []]
    if not targets and sanitized.get("target_label") is not None:
        targets = [int(sanitized["target_label"])]
    return targets


def record_ingestion_check(
    *,
    flow: str,
    params: Any,
    source: str,
    resolved_source: str,
    dataset: dict[str, Any],
    dvc: dict[str, Any] | None,
    data_version: str,
    sanitized: dict[str, Any],
    victim: dict[str, Any],
    purifier: dict[str, Any],
    purified_dvc: dict[str, Any] | None,
    seconds: float,
    runs_root: str | Path,
    parent_run_id: str | None = None,
    stages: dict[str, float] | None = None,
    image_size: str | None = None,
) -> dict[str, Any]:
    """Record the verdict of a DataElixir scan of ``dataset`` (``path`` / ``hash`` / ``name`` / ``info`` of a
    stored version) as an ingestion check: the MLflow run ``detoxops.kind=ingestion`` in ``<prefix>/<flow>``
    (tags, metrics, anomaly / decisions / check artifacts), the ``.check.json`` marker next to the version and
    the Prefect artifacts. Returns the check record (``status`` quarantined / passed). Shared by
    ``flows.ingestion_check`` and ``flows.demo`` (which re-uses the DataElixir result it already computed)."""
    import math

    import mlflow
    from prefect.runtime import flow_run

    from tasks.tracking import log_dataset, run

    targets = check_targets(sanitized)
    status = "quarantined" if targets else "passed"
    anomaly = sanitized.get("anomaly_index") or {}
    info = dataset.get("info") or {}
    record: dict[str, Any] = {
        "status": status,
        "dataset": dataset["name"],
        "source": source,
        "resolved_source": resolved_source,
        "version": dataset["path"],
        "hash": dataset["hash"],
        "dvc_md5": (dvc or {}).get("md5"),
        "dvc_file": (dvc or {}).get("dvc_file"),
        "data_version": data_version,
        "target_labels": targets,
        "target_label": targets[0] if targets else None,
        "counts": {"train": sanitized.get("n_train"), "flagged": sanitized.get("n_flagged"),
                   "sets": sanitized.get("sets") or {}},
        "anomaly_index": anomaly,
        "anomaly_rows": anomaly_rows(anomaly, info.get("class_names")),
        "threshold": params.dataelixir.anomaly_threshold,
        "target_rule": params.dataelixir.target_rule,
        "dataelixir": sanitized.get("dataelixir"),  # the settings that ran (profile resolved)
        "purified_version": sanitized["path"] if targets else None,
        "purified_dvc_md5": (purified_dvc or {}).get("md5"),
        "victim": victim["path"],
        "purifier": purifier["path"],
        "purifier_origin": purifier.get("origin"),
        "image_size": image_size,
        "stages": dict(stages or {}),
        "checked_at": now_utc(),
        "seconds": round(seconds, 1),
        "prefect_flow_run_id": str(flow_run.id) if flow_run.id else None,
        "marker": str(marker_path(dataset["path"])),
    }

    tags = {
        "detoxops.dataset": dataset["name"], "detoxops.data_version": data_version, "detoxops.status": status,
        "detoxops.target_label": ",".join(map(str, targets)) if targets else None,
        "detoxops.model": victim.get("arch") or params.victim.arch, "detoxops.seed": params.dataelixir.seed,
        "detoxops.source": source, "detoxops.marker": record["marker"],
        "detoxops.purified_version": record["purified_version"],
        "detoxops.purified_data_version": record["purified_dvc_md5"],
        "detoxops.prefect_flow_run_id": record["prefect_flow_run_id"],
    }
    with run(flow, f"check {dataset['name']}", kind="ingestion", prefix=params.tracking.experiment_prefix,
             parent_run_id=parent_run_id, tags=tags, params=params_as_run(params, sanitized, victim)) as active:
        record["mlflow_run_id"] = active.info.run_id
        log_dataset(dataset["path"], dataset["name"], data_version, "ingestion")
        metrics = {"seconds": seconds, "n_flagged": float(sanitized.get("n_flagged") or 0),
                   "n_train": float(sanitized.get("n_train") or 0),
                   **{f"seconds_{name}": float(v) for name, v in (stages or {}).items()}}
        # TPR / FPR only with ground-truth poison flags (a stored version that records its poisoned images):
        # a folder or archive carries none, so TPR is NaN and "FPR" would merely be the flagged share
        tpr = sanitized.get("tpr")
        if isinstance(tpr, float) and math.isfinite(tpr):
            metrics |= {k: sanitized[k] for k in ("tpr", "fpr")
                        if isinstance(sanitized.get(k), float) and math.isfinite(sanitized[k])}
        mlflow.log_metrics(metrics)
        staging = Path(runs_root) / flow / data_version[:16]
        log_dataelixir_artifacts(sanitized, params.dataelixir.anomaly_threshold, staging)
        marker = write_check_marker(dataset["path"], record)
        mlflow.log_artifact(str(marker), "check")
        (staging / "check.md").write_text(check_markdown(record))
        mlflow.log_artifact(str(staging / "check.md"), "check")

    publish_check_artifacts(record)
    return record


def record_failed_check(
    *,
    flow: str,
    source: str,
    error: BaseException,
    params: Any = None,
    dataset: dict[str, Any] | None = None,
    data_version: str | None = None,
    stages: dict[str, float] | None = None,
    seconds: float = 0.0,
    runs_root: str | Path | None = None,
) -> dict[str, Any]:
    """Record a check that ended without a verdict (``status`` ``failed``, with the reason): an MLflow run
    ``detoxops.kind=ingestion`` / ``detoxops.status=failed`` / ``detoxops.failure_reason`` (what the dashboard
    shows), the marker next to the version when one was ingested, and the Prefect report. Best effort: a store
    that is itself broken is reported on stdout and never hides the original error."""
    from detoxops.data.sources import source_name

    reason = str(error) or type(error).__name__
    name = (dataset or {}).get("name") or source_name(source)
    record: dict[str, Any] = {
        "status": "failed",
        "dataset": name,
        "source": source,
        "reason": reason,
        "error_type": type(error).__name__,
        "version": (dataset or {}).get("path"),
        "hash": (dataset or {}).get("hash"),
        "data_version": data_version,
        "target_labels": [],
        "target_label": None,
        "checked_at": now_utc(),
        "seconds": round(seconds, 1),
        "stages": dict(stages or {}),
        "marker": str(marker_path(dataset["path"])) if dataset else None,
    }
    try:
        from prefect.runtime import flow_run

        record["prefect_flow_run_id"] = str(flow_run.id) if flow_run.id else None
    except Exception:  # noqa: BLE001
        record["prefect_flow_run_id"] = None
    if dataset and Path(dataset["path"]).is_dir():
        try:
            write_check_marker(dataset["path"], record)
        except OSError as exc:
            print(f"could not write the check marker next to {dataset['path']}: {exc}")
            record["marker"] = None
    else:
        record["marker"] = None
    if params is not None:
        try:
            import mlflow

            from tasks.tracking import run

            tags = {"detoxops.dataset": name, "detoxops.status": "failed", "detoxops.source": source,
                    "detoxops.failure_reason": reason[:4000], "detoxops.error_type": type(error).__name__,
                    "detoxops.data_version": data_version, "detoxops.marker": record["marker"],
                    "detoxops.prefect_flow_run_id": record["prefect_flow_run_id"]}
            with run(flow, f"check {name}", kind="ingestion", prefix=params.tracking.experiment_prefix, tags=tags,
                     params=params.to_dict()) as active:
                record["mlflow_run_id"] = active.info.run_id
                mlflow.log_metrics({"seconds": seconds, **{f"seconds_{k}": float(v) for k, v in (stages or {}).items()}})
                mlflow.log_text(json.dumps(record, indent=2, default=str), "check/check.json")
                mlflow.log_text(check_markdown(record), "check/check.md")
        except Exception as exc:  # noqa: BLE001 - the store may be what failed
            print(f"could not record the failed check in MLflow: {type(exc).__name__}: {exc}")
    try:
        publish_check_artifacts(record)
    except Exception as exc:  # noqa: BLE001
        print(f"could not publish the Prefect report of the failed check: {type(exc).__name__}: {exc}")
    return record
