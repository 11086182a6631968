"""Your model, your images (issue #30) on the platform: the same classifier served over HTTP by `mlflow models
serve` (the project's pyfunc) evaluated by one `detoxops detox eval` command, agreeing with the classifier folder
and its ONNX export on `none`; and the `detox-byo` flow recording its run, example grids included, where the
dashboard's Defense results page reads it beside the benchmark's runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from detoxops.cli import app

pytestmark = pytest.mark.platform

_spec = importlib.util.spec_from_file_location(
    "byo_fixtures", Path(__file__).parents[1] / "commands" / "byo_fixtures.py"
)
byo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(byo)  # tests/ is not a package: the shared builders are loaded by path

PARAMS = str(Path(__file__).parents[1] / "commands" / "byo_params.yaml")  # defaults, not the repo's params.yaml
FAST = byo.FAST


@pytest.mark.timeout(900)
def test_served_pyfunc_classifier_folder_and_onnx_agree_on_none(tmp_path, mlflow_store, local_server):
    """The Done-when, (c): the classifier logged as the project's pyfunc (defense `none`), served by `mlflow models
    serve` on 127.0.0.1; one `detoxops detox eval --model http://.../invocations` prints none and sampdetox."""
    import mlflow

    from tasks.pyfunc_model import log_guard_model
    from tasks.tracking import ensure_experiment

    clean, triggered = byo.make_trees(tmp_path)
    victim = byo.train_backdoored(tmp_path / "victim")
    onnx = byo.export_onnx(victim, tmp_path / "victim.onnx")

    exp = ensure_experiment("detoxops/test-byo-serve", root=tmp_path)
    with mlflow.start_run(experiment_id=exp):
        example = byo.clean_images(1, seed=0)[0][:2]
        info = log_guard_model(victim, None, "none", {"batch_size": 64}, example, tmp_path / "work",
                               registered_model_name="detoxops-byo-test")

    port = local_server.free_port()
    env = local_server.env(mlflow_store)
    serve = local_server.mlflow_serve(f"models:/detoxops-byo-test/{info.registered_model_version}", port, env)
    with local_server.running(serve, port, env, tmp_path / "serve.log"):
        runner = CliRunner()
        common = ["detox", "eval", "--no-progress", "--params", PARAMS, "--clean", str(clean), "--triggered", str(triggered),
                  "--limit", "10", *(a for kv in FAST for a in ("--set", kv))]
        served = runner.invoke(app, [*common, "--model", f"http://127.0.0.1:{port}/invocations",
                                     "--defenses", "none,sampdetox"])
        assert served.exit_code == 0, served.output + repr(served.exception)
        assert "http " in served.output and "protocol mlflow" in served.output
        folder = runner.invoke(app, [*common, "--model", str(victim), "--defenses", "none"])
        exported = runner.invoke(app, [*common, "--model", str(onnx), "--defenses", "none"])
        assert folder.exit_code == 0 and exported.exit_code == 0, folder.output + exported.output

    rows = byo.table_rows(served.output)
    assert set(rows) == {"none", "sampdetox"}
    assert rows["none"] == byo.table_rows(folder.output)["none"] == byo.table_rows(exported.output)["none"]
    ca, pa, asr = rows["none"]
    assert ca >= 90 and asr >= 90 and pa <= 10
    assert all(0 <= v <= 100 for v in rows["sampdetox"])


@pytest.mark.timeout(900)
def test_byo_flow_records_rows_samples_and_the_dashboard_reads_them(tmp_stores, tmp_path):
    from mlflow.tracking import MlflowClient

    from dashboards import results
    from flows.detox import detox_byo, main

    client, stores = tmp_stores(tmp_path, "detox-byo", dvc_remote=False)
    clean, triggered = byo.make_trees(tmp_path)
    victim = byo.train_backdoored(tmp_path / "victim")
    table = detox_byo(str(clean), str(triggered), str(victim), ["sampdetox"], None, PARAMS,
                      [*stores, *FAST], max_images=8)
    assert [(r["attack"], r["defense"]) for r in table] == [("triggered:test_triggered", d)
                                                             for d in ("none", "sampdetox")]
    none = table[0]
    assert none["ca"] >= 0.8 and none["asr"] >= 0.8  # the backdoored classifier, scored with the right target

    exp = client.get_experiment_by_name("detoxops/detox-byo")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("detoxops.kind") == "report")
    assert parent.data.tags["detoxops.dataset"] == "test_clean"
    assert parent.data.tags["detoxops.model"] == "detoxops:small_cnn"
    assert parent.data.params["byo.target"] == "3 (cat)" and parent.data.metrics["n_clean"] == 8
    artifacts = {a.path for folder in ("results", "samples") for a in client.list_artifacts(parent.info.run_id, folder)}
    assert {"results/results.json", "results/results.csv", "results/notes.txt", "samples/grid.png"} <= artifacts
    defense_runs = [r for r in runs if r.data.tags.get("detoxops.kind") == "defense"]
    assert {r.data.tags["detoxops.defense"] for r in defense_runs} == {"none", "sampdetox"}
    for r in defense_runs:
        files = {a.path for a in client.list_artifacts(r.info.run_id, "samples")}
        assert files == {"samples/samples.npz", "samples/grid.png"}
        row = next(t for t in table if t["defense"] == r.data.tags["detoxops.defense"])
        assert r.data.metrics["asr"] == pytest.approx(row["asr"])
    local = MlflowClient().download_artifacts(
        next(r for r in defense_runs if r.data.tags["detoxops.defense"] == "sampdetox").info.run_id,
        "samples/samples.npz", str(tmp_path / "dl"))
    with np.load(local, allow_pickle=False) as npz:
        assert {"clean", "poisoned", "detoxified", "trigger_map"} <= set(npz.files)
        assert npz["clean"].shape == npz["poisoned"].shape == npz["detoxified"].shape == (8, 32, 32, 3)
        assert not np.array_equal(npz["poisoned"], npz["detoxified"])  # SampDetox changed the inputs

    # what the dashboard's Defense results page shows: its store's run frame, its table, its default selection
    import mlflow

    from dashboards import store

    frame = store.runs(mlflow.get_tracking_uri(), "detoxops")
    shown = results.defense_table(frame)
    shown = shown[shown["root_run_id"] == parent.info.run_id]
    assert set(shown["defense"]) == {"none", "sampdetox"}
    assert set(shown["attack"]) == {"triggered:test_triggered"} and set(shown["model"]) == {"detoxops:small_cnn"}
    assert set(shown["dataset"]) == {"test_clean"}
    assert parent.info.run_id in results.newest_run_per_flow(frame[frame["run_id"].isin(shown["root_run_id"])])

    # the CLI entry: the three go together
    with pytest.raises(SystemExit):
        main(["--clean", str(clean), "--model", str(victim)])
