"""A small real MLflow store (SQLite in tmp) recorded with the platform's own task helpers, for the dashboard tests.

Written through ``tasks/`` (ingestion, tracking runs, defense-row logging, sample artifacts, model registration)
and MLflow itself — no mocks — from real data: scikit-learn digits at 16×16 ingested by the data task, poisoned
by the registry's BadNets / Blended attacks; the "detoxified" panels come from a real (cheap) defense of the
core library (Gaussian blur), the registered purifier is a real tiny untrained diffusers UNet. The metric values
are the fixture's own inputs: the tests check that the dashboard shows and combines what was recorded, not the
defenses' quality (the full pipeline, `make demo`, needs training and is too slow for a unit-test fixture).
"""

from __future__ import annotations

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


def build_store(tmp: Path) -> dict:
    """Record an ingestion check and one demo-like flow run in ``tmp`` through the platform's task helpers
    (``tasks.data_tasks``, ``tasks.tracking``, ``tasks.detox_tasks.log_defense_rows``, ``tasks.artifacts``);
    returns the store's URI and what was recorded."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from detoxops.attacks import registry
    from detoxops.attacks.visibility import visibility_robustness_rows, write_rows_csv
    from detoxops.data import from_tensor, load_version, to_tensor
    from detoxops.defenses.transforms import Blur
    from tasks.artifacts import write_samples
    from tasks.data_tasks import ingest_dataset
    from tasks.detox_tasks import log_defense_rows
    from tasks.tracking import run

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    data_root = tmp / "data"
    ingested = ingest_dataset.fn("digits", {"image_size": 16, "train_per_class": 4, "test_per_class": 2,
                                            "root": str(data_root)}, root=str(data_root))
    data_version = ingested["hash"][:12]
    test = load_version(ingested["path"])["test"]
    clean, labels = test.images[:6], test.labels[:6]

    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name in ("detoxops/ingestion_check", "detoxops/demo"):  # artifacts in tmp, not the project's mlartifacts
        client.create_experiment(name, artifact_location=(tmp / "artifacts" / name.split("/")[1]).as_uri())
    common = {"detoxops.dataset": "digits", "detoxops.data_version": data_version, "detoxops.seed": "0",
              "detoxops.target_label": TARGET}

    with run("ingestion_check", "ingestion-check", kind="ingestion",
             tags={**common, "detoxops.status": "quarantined"}):
        mlflow.log_metrics({"tpr": 0.98, "fpr": 0.01})

    run_ids = {}
    staging = tmp / "staging"
    with run("demo", "demo", kind="report", tags=common, params={"victim": {"arch": "small_cnn"}}) as parent:
        parent_id = parent.info.run_id
        for attack_name in ("badnets", "blended"):
            attack = registry.create(attack_name, target=TARGET, poison_ratio=0.1, seed=0, image_size=16, num_classes=10)
            poisoned = attack.apply_trigger(clean, labels)
            rows = []
            for defense in ("none", "sampdetox"):
                ca, pa, asr = DEFENSE_METRICS[(attack_name, defense)]
                row = {"defense": defense, "ca": ca, "pa": pa, "asr": asr}  # tasks report fractions (issue #26)
                if defense == "sampdetox":  # the label-drift check: flagged for blended only
                    flagged = attack_name == "blended"
                    row |= {"drift_changed": 0.4 if flagged else 0.05, "drift_inflow": 0.37 if flagged else 0.02,
                            "drift_class": TARGET if flagged else 3, "drift_flagged": flagged}
                if defense == "sampdetox":
                    detoxified = from_tensor(Blur()(to_tensor(poisoned)).images)
                    trigger_map = (np.abs(poisoned.astype(float) - clean).mean(-1) / 255.0).astype(np.float32)
                    folder = staging / attack_name / defense / "samples"
                    write_samples(folder, clean, poisoned, detoxified, trigger_map, labels,
                                  np.full(len(labels), TARGET), labels)
                    row["samples_dir"] = str(folder)
                rows.append(row)
            ids = log_defense_rows(rows, "demo", parent_id, {**common, "detoxops.attack": attack_name,
                                                             "detoxops.model": "small_cnn"}, "detoxops")
            run_ids.update({(attack_name, r["defense"]): i for r, i in zip(rows, ids, strict=True)})

        # DataElixir sanitisation of the BadNets-poisoned training set
        with run("demo", "sanitize", kind="sanitize", parent_run_id=parent_id,
                 tags={**common, "detoxops.attack": "badnets", "detoxops.defense": "dataelixir",
                       "detoxops.model": "small_cnn"}) as sanitize:
            tpr, fpr, acc, asr, label_acc = ELIXIR_METRICS["badnets"]
            mlflow.log_metrics({"tpr": tpr, "fpr": fpr, "acc": acc, "asr": asr, "label_acc": label_acc})
            folder = staging / "decisions"
            folder.mkdir(parents=True)
            pd.DataFrame({"index": np.arange(6), "label": labels, "flagged": [1, 0, 1, 0, 0, 1],
                          "poisoned_true": [1, 0, 1, 0, 0, 0], "restored_label": labels}).to_csv(
                folder / "decisions.csv", index=False)
            flagged = np.array([0, 2, 5])
            candidates = np.stack([from_tensor(Blur(sigma=s)(to_tensor(clean[flagged])).images)
                                   for s in (0.5, 1.0, 1.5)], 1)
            np.savez_compressed(folder / "candidates.npz", index=flagged, original=clean[flagged], candidates=candidates)
            mlflow.log_artifacts(str(folder), "decisions")
            run_ids["sanitize"] = sanitize.info.run_id

        rows = []
        for attack_name in ("badnets", "blended"):
            attack = registry.create(attack_name, target=TARGET, poison_ratio=0.1, seed=0, image_size=16, num_classes=10)
            rows += visibility_robustness_rows(attack_name, clean, attack.apply_trigger(clean, labels),
                                               _corner_patch_classifier, TARGET, etas=np.linspace(0, 1, 21))
        mlflow.log_artifact(str(write_rows_csv(rows, staging / "visibility_robustness.csv")), "robustness")

        # registered models: the files a version points at (what Try it downloads)
        for name, writer in (("detoxops-victim", _write_victim), ("detoxops-purifier", _write_purifier)):
            folder = staging / "models" / name
            writer(folder)
            mlflow.log_artifacts(str(folder), name)
            # plain artifact folders (not MLflow "logged models"): mlflow.register_model("runs:/…") refuses them
            client.create_registered_model(name)
            mv = client.create_model_version(name, f"runs:/{parent_id}/{name}", run_id=parent_id)
            client.set_registered_model_alias(name, "champion", mv.version)
        run_ids["parent"] = parent_id
    mlflow.set_tracking_uri(previous_uri)
    return {"uri": uri, "data_root": data_root, "data_version": data_version, "run_ids": run_ids,
            "real_victim": has_real_victim(), "defense_metrics": DEFENSE_METRICS, "elixir_metrics": ELIXIR_METRICS,
            "target": TARGET}


def _write_purifier(folder: Path) -> None:
    """A real (untrained, tiny) diffusers purifier for 16x16 images, saved by the core library."""
    import torch

    from detoxops.config import ScheduleConfig, UNetConfig
    from detoxops.diffusion import NoiseSchedule, Purifier, build_unet, save_purifier

    torch.manual_seed(0)
    unet = build_unet(UNetConfig(sample_size=16, block_out_channels=[8, 16], layers_per_block=1))
    save_purifier(Purifier(unet, NoiseSchedule.from_config(ScheduleConfig())), folder)


def _write_victim(folder: Path) -> None:
    """A real (untrained) victim classifier saved by the core library, where it exists yet."""
    try:
        from detoxops.models import build_classifier, save_classifier
    except ImportError:  # detoxops.models not there yet: Try it must then explain, not crash
        folder.mkdir(parents=True)
        (folder / "README.txt").write_text("no classifier: detoxops.models.save_classifier is not available\n")
        return
    import torch

    torch.manual_seed(0)
    save_classifier(build_classifier("small_cnn", num_classes=10, in_channels=3, image_size=16), folder)


def has_real_victim() -> bool:
    try:
        from detoxops.models import load_classifier, save_classifier  # noqa: F401
    except ImportError:
        return False
    return True


def _corner_patch_classifier(x01):
    """A stand-in victim for the figure-2 rows: says 'target' while the bottom-right 2x2 corner (where BadNets puts
    its patch at 16x16) is bright."""
    import torch

    bright = x01[:, :, -2:, -2:].mean(dim=(1, 2, 3)) > 0.6
    return torch.where(bright, TARGET, 1)


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
