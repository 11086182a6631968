"""The sanitize flow on tiny BadNets-poisoned digits: DataElixir finds the target, the model retrained on the purified
set is registered, and the run records TPR / FPR / target / ACC / ASR where the dashboard looks for them."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.platform

DATA = ["data.train_per_class=40", "data.test_per_class=8"]


def test_sanitize_flow_registers_a_clean_model(tmp_stores, tiny_dataelixir, tmp_path):
    from flows.sanitize import CLEAN_MODEL, sanitize

    client, stores = tmp_stores(tmp_path, "sanitize")
    overrides = tiny_dataelixir + DATA + stores
    summary = sanitize("digits", "params.yaml", overrides, poison=True, max_images=32, dvc_root=str(tmp_path))

    assert summary["target_label"] == 0
    assert summary["tpr"] is not None and summary["fpr"] is not None
    assert Path(summary["purified_version"]).with_name(Path(summary["purified_version"]).name + ".dvc").is_file()
    for key in ("ca", "pa", "asr"):  # fractions
        assert 0.0 <= summary["after"][key] <= 1.0

    mv = client.get_model_version_by_alias(CLEAN_MODEL, "champion")
    assert str(mv.version) == summary["model_version"] and mv.run_id == summary["mlflow_run_id"]
    assert "clean_model/model.safetensors" in {a.path for a in client.list_artifacts(mv.run_id, "clean_model")}

    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.tags["detoxops.kind"] == "sanitize" and run.data.tags["detoxops.target_label"] == "0"
    assert {"tpr", "fpr", "acc", "asr"} <= set(run.data.metrics)
    assert run.data.metrics["tpr"] == pytest.approx(summary["tpr"])
    paths = {a.path for folder in ("anomaly", "decisions") for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"anomaly/anomaly_index.png", "decisions/decisions.csv"} <= paths
    parent_id = run.data.tags["mlflow.parentRunId"]
    siblings = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    victim = next(r for r in siblings if r.data.tags["detoxops.kind"] == "victim")
    assert {"ca", "pa", "asr"} <= set(victim.data.metrics)  # the baseline the dashboard's ΔACC / ΔASR use
    assert victim.data.tags["detoxops.attack"] == run.data.tags["detoxops.attack"] == "badnets"


def test_sanitize_flow_without_an_attack(tmp_stores, tmp_path):
    """``poison=False`` sanitises the data as it is: accuracy on the held-out half of its own test split (the one
    evaluation rule, ``eval_inputs``), no ASR / TPR; still registers."""
    from flows.sanitize import CLEAN_MODEL, sanitize

    client, stores = tmp_stores(tmp_path, "sanitize", dvc_remote=False)
    overrides = ["victim.epochs=2", "data.train_per_class=10", "data.test_per_class=4", "dataelixir.T=8",
                 "dataelixir.rounds=1", "dataelixir.keep_last=2", "dataelixir.ddim_stride=4",
                 "dataelixir.relabel_epochs=1", "dataelixir.finetune_epochs=1"] + stores
    summary = sanitize("digits", "params.yaml", overrides, poison=False, max_images=None)
    assert 0.0 <= summary["after"]["ca"] <= 1.0 and summary["after"]["n"] == 20  # held-out half of 10 x 4
    assert "asr" not in summary["after"] and summary["tpr"] is None
    run = client.get_run(summary["mlflow_run_id"])
    assert "acc" in run.data.metrics and "asr" not in run.data.metrics and "tpr" not in run.data.metrics
    assert "detoxops.attack" not in run.data.tags
    assert str(client.get_model_version_by_alias(CLEAN_MODEL, "champion").version) == summary["model_version"]
