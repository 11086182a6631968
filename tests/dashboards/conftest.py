"""A small real MLflow store (SQLite in tmp) recorded with the tracking conventions, for the dashboard tests.

The store is written with MLflow's own API (no mocks) from real data: scikit-learn digits at 16×16, poisoned
by the registry's BadNets / Blended attacks; per-image "detoxified" panels come from a real defense of the core
library (Gaussian blur, cheap). The metric values are the fixture's own inputs: the tests check that the
dashboard shows and combines what was recorded, not the defenses' quality.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

APP = str(ROOT / "dashboards" / "app.py")

# Recorded values: (attack, defense) -> (ca, pa, asr); elixir attack -> (tpr, fpr, acc, asr, label_acc).
DEFENSE_METRICS = {
    ("badnets", "none"): (0.95, 0.05, 0.96),
    ("badnets", "sampdetox"): (0.91, 0.88, 0.04),
    ("blended", "none"): (0.94, 0.10, 0.90),
    ("blended", "sampdetox"): (0.90, 0.80, 0.12),
}
ELIXIR_METRICS = {"badnets": (0.98, 0.01, 0.93, 0.02, 0.97)}
TARGET = 0


def _digits16(n: int):
    from detoxops.config import DataConfig
    from detoxops.data import load_source

    splits = load_source("digits", DataConfig(image_size=16, root="unused"), progress=False, cache=False)
    return splits, splits["test"].images[:n], splits["test"].labels[:n]


def _grid_png(panels: list[np.ndarray]) -> bytes:
    from PIL import Image

    rows = [np.concatenate(list(row), axis=1) for row in zip(*panels, strict=True)]
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(rows, axis=0)).resize((64 * len(panels), 64 * len(rows)),
                                                         Image.Resampling.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def build_store(tmp: Path) -> dict:
    """Record one demo-like flow run in ``tmp``; returns the URIs and what was recorded."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from detoxops.attacks import registry
    from detoxops.attacks.visibility import visibility_robustness_rows
    from detoxops.data import from_tensor, save_version, to_tensor
    from detoxops.defenses.transforms import Blur

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    data_root = tmp / "data"
    splits, clean, labels = _digits16(6)
    version = save_version({"train": splits["train"].subset(np.arange(40)), "test": splits["test"].subset(np.arange(20))},
                           data_root, "digits", source="digits")
    data_version = version.name

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    common = {"detoxops.dataset": "digits", "detoxops.data_version": data_version, "detoxops.seed": "0",
              "detoxops.code_version": "test"}
    for name in ("detoxops/ingestion_check", "detoxops/demo"):  # artifacts in tmp, not ./mlruns of the CWD
        client.create_experiment(name, artifact_location=(tmp / "artifacts" / name.split("/")[1]).as_uri())
    mlflow.set_experiment("detoxops/ingestion_check")
    with mlflow.start_run(run_name="ingestion-check", tags={**common, "detoxops.kind": "ingestion",
                                                            "detoxops.status": "quarantined",
                                                            "detoxops.target_label": str(TARGET)}):
        mlflow.log_metrics({"tpr": 0.98, "fpr": 0.01})

    mlflow.set_experiment("detoxops/demo")
    run_ids = {}
    with mlflow.start_run(run_name="demo", tags={**common, "detoxops.kind": "report"}) as parent:
        mlflow.log_param("victim.arch", "small_cnn")
        for attack_name in ("badnets", "blended"):
            attack = registry.create(attack_name, target=TARGET, poison_ratio=0.1, seed=0, image_size=16, num_classes=10)
            poisoned = attack.apply_trigger(clean, labels)
            for defense in ("none", "sampdetox"):
                ca, pa, asr = DEFENSE_METRICS[(attack_name, defense)]
                tags = {**common, "detoxops.kind": "defense", "detoxops.attack": attack_name,
                        "detoxops.defense": defense, "detoxops.target_label": str(TARGET)}
                with mlflow.start_run(run_name=f"{attack_name}-{defense}", nested=True, tags=tags) as run:
                    mlflow.log_param("victim.arch", "small_cnn")
                    mlflow.log_metrics({"ca": ca, "pa": pa, "asr": asr})
                    run_ids[(attack_name, defense)] = run.info.run_id
                    if defense == "sampdetox":
                        detoxified = from_tensor(Blur()(to_tensor(poisoned)).images)
                        trigger_map = (np.abs(poisoned.astype(float) - clean).mean(-1) / 255.0).astype(np.float32)
                        arrays = {"clean": clean, "poisoned": poisoned, "trigger_map": trigger_map,
                                  "detoxified": detoxified, "labels": labels}
                        _log_npz(run.info.run_id, client, tmp, "samples", "samples.npz", arrays)
                        grid = _grid_png([clean, poisoned, (np.repeat(trigger_map[..., None], 3, -1) * 255)
                                          .astype(np.uint8), detoxified])
                        _log_bytes(run.info.run_id, client, tmp, "samples", "grid.png", grid)

        # DataElixir sanitisation of the BadNets-poisoned training set
        with mlflow.start_run(run_name="badnets-dataelixir", nested=True,
                              tags={**common, "detoxops.kind": "sanitize", "detoxops.attack": "badnets",
                                    "detoxops.defense": "dataelixir", "detoxops.target_label": str(TARGET)}) as run:
            tpr, fpr, acc, asr, label_acc = ELIXIR_METRICS["badnets"]
            mlflow.log_param("victim.arch", "small_cnn")
            mlflow.log_metrics({"tpr": tpr, "fpr": fpr, "acc": acc, "asr": asr, "label_acc": label_acc})
            decisions = pd.DataFrame({"index": np.arange(6), "label": labels, "poisoned_true": [1, 0, 1, 0, 0, 0],
                                      "flagged": [1, 0, 1, 0, 0, 1], "restored_label": labels})
            _log_bytes(run.info.run_id, client, tmp, "decisions", "decisions.csv", decisions.to_csv(index=False).encode())
            flagged = np.array([0, 2, 5])
            candidates = np.stack([from_tensor(Blur(sigma=s)(to_tensor(clean[flagged])).images) for s in (0.5, 1.0, 1.5)], 1)
            _log_npz(run.info.run_id, client, tmp, "decisions", "candidates.npz",
                     {"index": flagged, "original": clean[flagged], "candidates": candidates})
            run_ids["sanitize"] = run.info.run_id

        rows = []
        for attack_name in ("badnets", "blended"):
            attack = registry.create(attack_name, target=TARGET, poison_ratio=0.1, seed=0, image_size=16, num_classes=10)
            rows += visibility_robustness_rows(attack_name, clean, attack.apply_trigger(clean, labels),
                                               _corner_patch_classifier, TARGET, etas=np.linspace(0, 1, 21))
        _log_bytes(parent.info.run_id, client, tmp, "robustness", "visibility_robustness.csv",
                   pd.DataFrame(rows).to_csv(index=False).encode())
        run_ids["parent"] = parent.info.run_id

    # registered models: the files a version points at (what Try it downloads)
    for name in ("detoxops-victim", "detoxops-purifier"):
        folder = tmp / name
        folder.mkdir()
        (folder / "README.txt").write_text(f"{name}: placeholder until the real tasks register models\n")
        client.log_artifacts(run_ids["parent"], str(folder), name)
        client.create_registered_model(name)
        mv = client.create_model_version(name, f"runs:/{run_ids['parent']}/{name}", run_id=run_ids["parent"])
        client.set_registered_model_alias(name, "champion", mv.version)
    return {"uri": uri, "data_root": data_root, "data_version": data_version, "run_ids": run_ids,
            "defense_metrics": DEFENSE_METRICS, "elixir_metrics": ELIXIR_METRICS, "target": TARGET}


def _corner_patch_classifier(x01):
    """A stand-in victim for the figure-2 rows: says 'target' while the bottom-right 3x3 corner is bright."""
    import torch

    bright = x01[:, :, -3:, -3:].mean(dim=(1, 2, 3)) > 0.6
    return torch.where(bright, TARGET, 1)


def _log_bytes(run_id: str, client, tmp: Path, folder: str, name: str, data: bytes) -> None:
    staging = tmp / "staging" / run_id / folder
    staging.mkdir(parents=True, exist_ok=True)
    (staging / name).write_bytes(data)
    client.log_artifact(run_id, str(staging / name), folder)


def _log_npz(run_id: str, client, tmp: Path, folder: str, name: str, arrays: dict) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    _log_bytes(run_id, client, tmp, folder, name, buf.getvalue())


@pytest.fixture(scope="session")
def tracking_store(tmp_path_factory) -> dict:
    return build_store(tmp_path_factory.mktemp("dash-store"))


@pytest.fixture
def dashboard_env(tracking_store, monkeypatch):
    """Point the dashboard at the fixture store; fresh Streamlit caches for every test."""
    import streamlit as st

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_store["uri"])
    monkeypatch.setenv("DETOXOPS_DATA_ROOT", str(tracking_store["data_root"]))
    st.cache_data.clear()
    st.cache_resource.clear()
    yield tracking_store
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def empty_env(tmp_path, monkeypatch):
    """A store with the database file but no runs (created by MLflow itself)."""
    import streamlit as st
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # creates and migrates the empty database
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DETOXOPS_DATA_ROOT", str(tmp_path / "data"))
    st.cache_data.clear()
    st.cache_resource.clear()
    yield uri
    st.cache_data.clear()
    st.cache_resource.clear()


os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
