"""Sanitize: DataElixir on a (possibly poisoned) training set, its artifacts written, its detection scored.

The one implementation behind ``detoxops sanitize`` (and so the ``sanitize`` stage of ``dvc.yaml``), the Prefect
task ``tasks.sanitize_tasks.sanitize_dataset`` and the benchmarks. Artifacts, whichever way it is run:

- the purified :class:`~detoxops.data.ImageSet` (provenance and ground-truth poison flags carried over);
- ``decisions.csv``: :meth:`SanitizeResult.decisions_csv`, one row per sample (set, eta, vote, chosen candidate,
  final label, flagged, ground truth);
- ``anomaly_index.json``: the target-label detection (per-label metrics and MAD anomaly indices);
- the summary (:meth:`SanitizeOutcome.summary`): target labels, counts, TPR / FPR as fractions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detoxops.config import Params, VictimConfig
from detoxops.data import ImageSet
from detoxops.fileio import atomic_dir
from detoxops.metrics import detection_rates

__all__ = ["SanitizeOutcome", "relabel_config", "sanitize", "sanitize_shards", "shard_count", "DECISIONS_FILE",
           "ANOMALY_FILE"]

DECISIONS_FILE = "decisions.csv"
ANOMALY_FILE = "anomaly_index.json"


@dataclass(frozen=True)
class SanitizeOutcome:
    """What a sanitize run found and where its artifacts are. Rates are fractions in [0, 1]; ``None`` where the
    data carry no ground truth for them (no poisoned, or no benign, samples)."""

    dataset: Path
    """The purified ImageSet folder (``out``, or ``<version>/train`` when only a version was asked for)."""
    decisions: Path
    anomaly_index: Path
    content_hash: str
    """:meth:`ImageSet.content_hash` of the purified set: equal outcomes have equal hashes."""
    target_labels: list[int]
    flagged: int
    n: int
    sets: dict[str, int]
    tpr: float | None
    fpr: float | None
    version: Path | None = None
    """The purified set as a dataset version ``<root>/<name>/<hash12>/`` (with the decisions), when asked for."""
    anomaly: dict[str, Any] = field(default_factory=dict, repr=False)
    settings: dict[str, Any] = field(default_factory=dict, repr=False)
    """The DataElixir settings that ran (``dataelixir.profile`` resolved for the purifier's image size)."""

    @property
    def target_label(self) -> int | None:
        return self.target_labels[0] if self.target_labels else None

    def summary(self) -> dict[str, Any]:
        """The JSON summary ``detoxops sanitize`` prints and writes with ``--summary`` (the DVC metrics file)."""
        out: dict[str, Any] = {"target_labels": self.target_labels, "flagged": self.flagged, "n": self.n,
                               "sets": self.sets, "content_hash": self.content_hash}
        if self.tpr is not None or self.fpr is not None:
            out |= {"tpr": self.tpr, "fpr": self.fpr}
        if self.version is not None:
            out["version"] = str(self.version)
        return out


def relabel_config(params: Params) -> VictimConfig:
    """The recipe of the benign model DataElixir trains to relabel suspicious samples: the victim's own
    (``params.victim``) for ``dataelixir.relabel_epochs`` epochs (``victim.airbench.epochs`` too: the airbench
    recipe of ``fast_cnn`` counts its epochs there, and would otherwise ignore the setting)."""
    cfg = params.victim.model_copy(update={"epochs": params.dataelixir.relabel_epochs})
    airbench = cfg.airbench.model_copy(update={"epochs": float(params.dataelixir.relabel_epochs)})
    return cfg.model_copy(update={"airbench": airbench})


def sanitize(
    train: ImageSet,
    victim,
    params: Params,
    *,
    out: str | Path | None = None,
    version_root: str | Path | None = None,
    version_name: str = "purified",
    source: str = "dataelixir",
    purifier=None,
    workdir: str | Path | None = None,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> SanitizeOutcome:
    """Run DataElixir (``params.dataelixir``, relabelling with :func:`relabel_config`) on ``train`` with the
    ``victim`` classifier and the purifier of :func:`~detoxops.operations.choose_purifier` with DataElixir's purifier
    setting (:func:`~detoxops.operations.dataelixir_purifier`; ``purifier``: a folder or shipped name that wins, or an
    already loaded :class:`~detoxops.diffusion.Purifier`).

    Writes the purified set with ``decisions.csv`` and ``anomaly_index.json`` to ``out`` (one atomic folder) and/or
    as a dataset version under ``version_root`` (same files, same atomic step). ``workdir`` holds the resumable
    candidate shards (default ``<out>.work``, else ``<version_root>/work``). ``device`` ``None`` = ``auto``.
    """
    from detoxops.defenses.dataelixir import DataElixir

    if out is None and version_root is None:
        raise ValueError("sanitize needs an output folder (out) or a version root (version_root)")
    out = None if out is None else Path(out)
    if out is not None and out.exists() and not overwrite:  # before hours of work, not after
        raise FileExistsError(f"{out} already exists (pass --force / overwrite=True to replace it)")
    if workdir is None:
        workdir = out.with_name(out.name + ".work") if out is not None else Path(version_root) / "work"
    pur = _purifier_for(train, params, purifier, device)
    result = DataElixir(pur, params.dataelixir, relabel_config(params)).sanitize(
        train, victim, workdir, progress=progress)

    purified = result.dataset
    files = {DECISIONS_FILE: result.decisions_csv(), ANOMALY_FILE: json.dumps(result.anomaly_index, indent=1)}
    dataset_dir = decisions = anomaly = version = None
    if out is not None:
        with atomic_dir(out, overwrite=overwrite) as tmp:  # the set and its decisions appear together or not at all
            purified.write_into(tmp)
            for name, text in files.items():
                (tmp / name).write_text(text)
        dataset_dir, decisions, anomaly = out, out / DECISIONS_FILE, out / ANOMALY_FILE
    if version_root is not None:
        from detoxops.data import save_version

        version = save_version({"train": purified}, version_root, version_name, source=source,
                               extra={"sanitize": purified.meta["sanitize"]}, files=files)
        if out is None:
            dataset_dir, decisions, anomaly = version / "train", version / DECISIONS_FILE, version / ANOMALY_FILE

    tpr = fpr = None
    if train.poisoned.any():  # ground truth known (a poisoned set made here); NaN (no benign samples) -> None
        rates = detection_rates(train.labels, purified.labels, train.poisoned)
        tpr, fpr = (None if r != r else r for r in rates)
    meta = purified.meta["sanitize"]
    return SanitizeOutcome(
        dataset=dataset_dir, decisions=decisions, anomaly_index=anomaly, content_hash=purified.content_hash(),
        target_labels=[int(t) for t in result.target_labels], flagged=int(result.flagged.sum()), n=len(train),
        sets=dict(meta["sets"]), tpr=tpr, fpr=fpr, version=version, anomaly=result.anomaly_index,
        settings=dict(meta["params"]),
    )


def shard_count(n_images: int, params: Params) -> int:
    """How many candidate shards DataElixir splits ``n_images`` into (``dataelixir.shard_size`` each)."""
    return -(-int(n_images) // params.dataelixir.shard_size)


def sanitize_shards(
    train: ImageSet,
    victim,
    params: Params,
    shard_ids: list[int],
    workdir: str | Path,
    *,
    purifier=None,
    device: str | None = None,
    progress: bool = True,
) -> list[int]:
    """DataElixir's costly stage alone (candidate sets, :meth:`DataElixir.compute_shards`) for ``shard_ids``, stored
    in ``workdir``: run disjoint lists of shards in parallel workers that share ``workdir``, then :func:`sanitize`
    with the same ``workdir`` loads them and does the rest. Returns the shards this call computed (stored ones are
    skipped)."""
    from detoxops.defenses.dataelixir import DataElixir

    pur = _purifier_for(train, params, purifier, device)
    return DataElixir(pur, params.dataelixir, relabel_config(params)).compute_shards(
        train, victim, workdir, list(shard_ids), progress=progress)


def _purifier_for(train: ImageSet, params: Params, purifier, device: str | None):
    """``purifier`` when it is a loaded one (a benchmark's, reused across runs), else the one
    :func:`~detoxops.operations.load_chosen_purifier` picks for the data with DataElixir's purifier setting
    (:func:`~detoxops.operations.dataelixir_purifier`; ``device`` ``None`` = ``auto``)."""
    from detoxops.models import resolve_device
    from detoxops.operations.purifier import dataelixir_diffusion, load_chosen_purifier

    if hasattr(purifier, "schedule"):
        return purifier
    size = int(train.image_shape[0])
    return load_chosen_purifier(purifier, dataelixir_diffusion(params, size), size,
                                device=resolve_device(device or "auto"))
