"""The ingestion check on tiny digits data: a BadNets-poisoned class-folder dataset is quarantined (Failed flow run,
marker next to the DVC version, purified version recorded, MLflow tags, Prefect artifact), a clean one passes; the
dashboard's Overview shows both; the cron deployment and the DVC-tracked source are wired up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.platform

TARGET = 0


@pytest.fixture(scope="module")
def workspace(tmp_stores, tiny_dataelixir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ingestion")
    _, stores = tmp_stores(root, "ingestion_check")
    return {"root": root, "overrides": tiny_dataelixir + stores}


def write_class_folders(folder: Path, splits: dict) -> Path:
    """``<split>/<class>/<i>.png`` — what an incoming dataset looks like."""
    from PIL import Image

    for split, ds in splits.items():
        for i, (image, label) in enumerate(zip(ds.images, ds.labels, strict=True)):
            out = folder / split / ds.class_names[int(label)] / f"{i:05d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(out)
    return folder


@pytest.fixture(scope="module")
def poisoned_source(workspace):
    """400 digits (40 per class), 10 % BadNets-poisoned towards label 0, with a clean test split."""
    from detoxops.attacks import poison_datasets, registry
    from detoxops.config import DataConfig
    from detoxops.data import load_source

    splits = load_source("digits", DataConfig(image_size=16, train_per_class=40, test_per_class=8), progress=False)
    attack = registry.create("badnets", target=TARGET, poison_ratio=0.1, seed=0, image_size=16, num_classes=10)
    poisoned_train, _ = poison_datasets(attack, splits["train"], splits["test"])
    return write_class_folders(workspace["root"] / "incoming-poisoned",
                               {"train": poisoned_train, "test": splits["test"]})


@pytest.fixture(scope="module")
def poisoned_check(workspace, poisoned_source):
    from flows.ingestion_check import ingestion_check

    state = ingestion_check(str(poisoned_source), "params.yaml", workspace["overrides"],
                            dvc_root=str(workspace["root"]), return_state=True)
    return state


@pytest.fixture(scope="module")
def clean_check(workspace, poisoned_check):  # after the poisoned one: the latest check is the clean one
    from flows.ingestion_check import ingestion_check

    overrides = workspace["overrides"] + ["data.train_per_class=40", "data.test_per_class=8"]
    return ingestion_check("digits", "params.yaml", overrides, dvc_root=str(workspace["root"]), return_state=True)


def flow_run_artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


def mlflow_run(run_id):
    import mlflow
    from mlflow.tracking import MlflowClient

    return MlflowClient(mlflow.get_tracking_uri()).get_run(run_id)


def test_poisoned_dataset_is_quarantined(poisoned_check):
    state = poisoned_check
    assert state.is_failed(), state
    assert "quarantined" in state.message and f"[{TARGET}]" in state.message
    record = state.result(raise_on_failure=False)
    assert record["status"] == "quarantined" and record["target_labels"] == [TARGET]
    assert record["counts"]["train"] == 400 and record["counts"]["flagged"] > 0

    # marker next to the version and its .dvc file; the purified version recorded (and DVC-tracked) beside it
    version = Path(record["version"])
    marker = version.with_name(version.name + ".check.json")
    assert marker.is_file() and version.with_name(version.name + ".dvc").is_file()
    saved = json.loads(marker.read_text())
    assert saved["status"] == "quarantined" and saved["target_label"] == TARGET
    assert saved["dvc_md5"] == record["dvc_md5"] and saved["dvc_md5"].endswith(".dir")
    purified = Path(saved["purified_version"])
    assert (purified / "version.json").is_file() and purified.parent.parent == version.parent.parent
    assert purified.with_name(purified.name + ".dvc").is_file() and saved["purified_dvc_md5"]
    from tasks.ingestion_tasks import check_status

    assert check_status(version)["status"] == "quarantined"

    # MLflow: what the dashboard's Overview reads
    r = mlflow_run(record["mlflow_run_id"])
    tags = r.data.tags
    assert tags["detoxops.kind"] == "ingestion" and tags["detoxops.status"] == "quarantined"
    assert tags["detoxops.target_label"] == str(TARGET)
    assert tags["detoxops.data_version"] == record["dvc_md5"] and tags["detoxops.dataset"] == "incoming-poisoned"
    assert tags["detoxops.purified_version"] == saved["purified_version"]
    assert "seconds" in r.data.metrics and not {"tpr", "fpr"} & set(r.data.metrics)  # a folder carries no ground truth
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    paths = {a.path for folder in ("anomaly", "decisions", "check")
             for a in client.list_artifacts(r.info.run_id, folder)}
    assert {"anomaly/anomaly_index.png", "anomaly/anomaly_index.json", "decisions/decisions.csv",
            "check/" + marker.name} <= paths

    # Prefect: the report artifact on the failed flow run
    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    by_key = {a.key: a for a in artifacts}
    report = by_key["ingestion-check-incoming-poisoned"]
    assert report.type == "markdown" and "QUARANTINED" in report.data and "target label" in report.data
    table = by_key["ingestion-check-incoming-poisoned-anomaly"]
    assert table.type == "table"


def test_clean_dataset_passes(clean_check):
    state = clean_check
    assert state.is_completed(), state.message
    record = state.result()
    assert record["status"] == "passed" and record["target_labels"] == [] and record["target_label"] is None
    assert record["purified_version"] is None
    version = Path(record["version"])
    assert json.loads(version.with_name(version.name + ".check.json").read_text())["status"] == "passed"
    tags = mlflow_run(record["mlflow_run_id"]).data.tags
    assert tags["detoxops.status"] == "passed" and "detoxops.target_label" not in tags
    report = {a.key: a for a in flow_run_artifacts(state.state_details.flow_run_id)}["ingestion-check-digits"]
    assert "PASSED" in report.data and "clean" in report.data


def test_overview_shows_the_checks(poisoned_check, clean_check, dashboard_on):
    """The dashboard reads exactly what the flow recorded."""
    at = dashboard_on(Path(clean_check.result()["version"]).parents[1])
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Latest check"] == "passed"
    assert int(metrics["Quarantined"]) >= 1 and int(metrics["Passed"]) >= 1
    assert any("passed the check" in s.value for s in at.success)


def test_cron_deployment_and_cli_wiring(monkeypatch):
    import flows.ingestion_check as module

    options = module.deployment_options("data/incoming", overrides=["victim.epochs=5"], cron="*/15 * * * *")
    deployment = module.ingestion_check.to_deployment(**options)
    assert deployment.name == "ingestion-check"
    assert [s.schedule.cron for s in deployment.schedules] == ["*/15 * * * *"]
    assert deployment.parameters["source"] == "data/incoming"
    assert deployment.parameters["overrides"] == ["victim.epochs=5"]
    assert deployment.entrypoint.endswith("ingestion_check.py:ingestion_check")

    served = {}
    monkeypatch.setattr(module.ingestion_check, "serve", lambda **kw: served.update(kw))
    assert module.main(["--source", "data/incoming", "--serve", "--cron", "0 * * * *"]) == 0
    assert served["cron"] == "0 * * * *" and served["name"] == "ingestion-check"
    assert served["parameters"]["source"] == "data/incoming" and served["parameters"]["workers"] == 1
    assert module.main(["--source", "data/incoming", "--serve", "--workers", "3"]) == 0
    assert served["parameters"]["workers"] == 3
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0


def test_dvc_tracked_source_is_pulled(tmp_path):
    """A ``.dvc`` file (or a tracked path missing from the workspace) is pulled before ingestion."""
    import shutil

    from tasks.ingestion_tasks import resolve_source
    from tasks.versioning import ensure_repo, version_path

    folder = tmp_path / "incoming" / "cats"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("hello")
    ensure_repo(tmp_path, tmp_path / "remote")
    tracked = version_path(tmp_path / "incoming", tmp_path)
    shutil.rmtree(tmp_path / "incoming")
    assert resolve_source.fn(tracked["dvc_file"]) == str((tmp_path / "incoming").resolve())
    assert (tmp_path / "incoming" / "cats" / "a.txt").read_text() == "hello"
    shutil.rmtree(tmp_path / "incoming")
    assert resolve_source.fn(str(tmp_path / "incoming")) == str((tmp_path / "incoming").resolve())
    assert resolve_source.fn("digits") == "digits"


def test_a_configured_purifier_of_another_size_names_the_size_to_set():
    """``purifier_for_check`` on ``detoxops.operations.choose_purifier``: the check says which data.image_size fits."""
    from detoxops.config import DiffusionConfig, load_params
    from detoxops.operations import choose_purifier
    from tasks import PROJECT_ROOT
    from tasks.ingestion_tasks import PurifierUnavailable, purifier_for_check

    folder, _ = choose_purifier(None, DiffusionConfig(), 16)
    params = load_params(PROJECT_ROOT / "params.yaml", [f"dataelixir.purifier={folder}"], announce=False)
    with pytest.raises(PurifierUnavailable, match=r"trained on 16x16 images but the data are 32x32.*data.image_size=16"):
        purifier_for_check(params, 32)
    defaults = load_params(PROJECT_ROOT / "params.yaml", [], announce=False)
    assert purifier_for_check(defaults, 16)[1] == "shipped:digits-16"
    # DataElixir's own purifier: the cpu_cifar10 profile's for 32 px, as the sanitize operation picks it
    assert purifier_for_check(defaults, 32)[1] == "shipped:cifar10-32-v2"
