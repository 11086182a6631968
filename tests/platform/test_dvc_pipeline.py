"""`dvc repro` and `dvc exp run` on the project's real dvc.yaml, in a scratch Git + DVC copy with tiny params.

The copy holds dvc.yaml, params.yaml (shrunk: 20 train / 10 test digits per class, 2 victim epochs, one DataElixir
round, DDIM, a two-point sweep grid), the code and shipped purifiers the stages depend on, and a link to this
checkout's .venv (the stages call ``.venv/bin/detoxops``). Checked: every stage runs (ingest → poison → train_victim →
train_purifier (the shipped digits purifier, copied) → prepare_elixir_purifier (DataElixir's: that copy again) → evaluate, sanitize, detox_eval → report, sweep and
sweep_point), the report joins the held-out defense rows and the sanitize finding, the sweep stage chose one of its
grid's points by the rule (``detoxops.operations.sweep``), a second ``dvc repro`` re-runs nothing, ``dvc status`` of
the whole project is clean, and ``dvc exp run sweep_point -S sampdetox.t2=80`` records an experiment whose params and
val metrics ``dvc exp show`` reports.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DVC = ROOT / ".venv" / "bin" / "dvc"

pytestmark = pytest.mark.skipif(
    not DVC.is_file() or shutil.which("git") is None,
    reason="needs the project's .venv (make setup) with dvc, and git",
)

TINY = {
    "data": {"train_per_class": 20, "test_per_class": 10},
    "victim": {"epochs": 2, "width": 8, "augment": False, "device": "cpu"},
    "sampdetox": {"sampler": "ddim", "ddim_stride": 20, "batch_size": 64},
    "dataelixir": {"T": 40, "rounds": 1, "keep_last": 2, "sampler": "ddim", "ddim_stride": 10,
                   "relabel_epochs": 1, "finetune_epochs": 1, "batch_size": 64},
    "sweep": {"grid": {"t2": [40, 80]}},
}
STAGES = ["report", "sweep", "sweep_point"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, scratch_repo) -> tuple[Path, dict[str, str]]:
    proj = tmp_path_factory.mktemp("dvcproj")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("src", "flows", "tasks"):
        shutil.copytree(ROOT / folder, proj / folder, ignore=ignore)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, proj / name)
    (proj / ".venv").symlink_to(ROOT / ".venv")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    params["data"]["root"] = str(proj / "data")
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (proj / ".gitignore").write_text(".venv\n/data/\n")
    env = scratch_repo.init(proj)
    return proj, env


def test_dvc_repro_runs_the_pipeline_and_caches(project, scratch_repo):
    proj, env = project
    log = scratch_repo.run([str(DVC), "repro", *STAGES], proj, env)
    for stage in ("ingest", "poison", "train_victim", "train_purifier", "prepare_elixir_purifier", "evaluate",
                  "sanitize", "detox_eval", "report", "sweep", "sweep_point"):
        assert f"Running stage '{stage}'" in log, f"stage {stage} did not run:\n{log}"
    # diffusion.purifier is null and a purifier ships for 16x16: the stage copies it rather than training one
    assert json.loads((proj / "pipeline/purifier/origin.json").read_text())["origin"] == "shipped:digits-16"
    # DataElixir's profile (cpu_digits at 16 px) names no purifier of its own: the stage copies the pipeline's
    elixir = json.loads((proj / "pipeline/purifier-dataelixir/origin.json").read_text())
    assert elixir["origin"] == "configured" and elixir["source"].endswith("pipeline/purifier")
    assert ((proj / "pipeline/purifier-dataelixir/diffusion_pytorch_model.safetensors").read_bytes()
            == (proj / "pipeline/purifier/diffusion_pytorch_model.safetensors").read_bytes())
    lock = yaml.safe_load((proj / "dvc.lock").read_text())["stages"]
    assert {"ingest", "poison", "train_victim", "sanitize", "detox_eval", "report"} <= set(lock)
    # the ingest stage stored a dataset version that poison read as-is
    info = json.loads((proj / "pipeline/raw/version.json").read_text())
    assert info["splits"]["train"]["count"] == 200 and info["splits"]["test"]["count"] == 100
    attack = json.loads((proj / "pipeline/poisoned/attack.json").read_text())
    assert attack["data_source"] == "pipeline/raw" and attack["train"]["num_poisoned"] == 20
    # report: victim row + the held-out defense rows + the sanitize finding
    report = (proj / "pipeline/report/report.md").read_text()
    for row in ("victim (full test)", "| none |", "| sampdetox |", "| faithful |", "| blur |"):
        assert row in report
    summary = json.loads((proj / "pipeline/sanitize.json").read_text())
    assert {"target_labels", "flagged", "tpr", "fpr"} <= set(summary)
    assert "target label(s) found" in report and "TPR" in report
    metrics = json.loads(scratch_repo.run([str(DVC), "metrics", "show", "--json"], proj, env, stdout_only=True))
    files = next(iter(metrics.values()))["data"]
    assert files["pipeline/sanitize.json"]["data"]["flagged"] == summary["flagged"]
    assert files["pipeline/sampdetox/metrics.json"]["data"]["split"] == "test"
    # the sweep stage is the sweep operation over params' grid: both points and no defense on val, the rule's choice
    # checked on the held-out part; the point stage scores params.sampdetox as it is the same way
    result = json.loads((proj / "pipeline/sweep/sweep_result.json").read_text())
    assert [r["setting"] for r in result["val_rows"]] == ["none", "t2=40", "t2=80"]
    assert result["setting"] in ("t2=40", "t2=80") and result["unit"] == "fraction"
    assert [r["setting"] for r in result["heldout_rows"]] == ["none", result["setting"]]
    sweep_metrics = files["pipeline/sweep/metrics.json"]["data"]
    assert sweep_metrics["setting"] == result["setting"]
    assert sweep_metrics["heldout"]["mean_asr"] == pytest.approx(100 * result["heldout"]["mean_asr"])
    point = files["pipeline/sweep-point/metrics.json"]["data"]
    assert point["setting"] == "params" and {"mean_asr", "mean_pa", "mean_ca_drop"} <= set(point["val"])
    # nothing changed → nothing re-runs
    again = scratch_repo.run([str(DVC), "repro", *STAGES], proj, env)
    assert "Running stage" not in again, again
    status = scratch_repo.run([str(DVC), "status"], proj, env, stdout_only=True)  # the whole project
    assert "Data and pipelines are up to date" in status, status


def test_dvc_exp_run_sweeps_a_sampdetox_param(project, scratch_repo):
    proj, env = project
    scratch_repo.run([str(DVC), "repro", *STAGES], proj, env)  # no-op after the first test; makes this one standalone
    scratch_repo.run(["git", "add", "-A"], proj, env)
    scratch_repo.run(["git", "commit", "-q", "-m", "pipeline run"], proj, env)
    log = scratch_repo.run([str(DVC), "exp", "run", "sweep_point", "-S", "sampdetox.t2=80", "-n", "t2-80"], proj,
                           env)
    assert "Running stage 'sweep_point'" in log
    for stage in ("ingest", "poison", "train_victim", "train_purifier"):  # upstream stages are up to date
        assert f"Running stage '{stage}'" not in log, log
    rows = json.loads(scratch_repo.run([str(DVC), "exp", "show", "--json"], proj, env, stdout_only=True))
    exps = [e for rev in rows for e in (rev.get("experiments") or []) for e in (e.get("revs") or [])]
    named = [e for e in exps if e.get("name") == "t2-80"]
    assert named, rows
    data = named[0]["data"]
    assert data["params"]["params.yaml"]["data"]["sampdetox"]["t2"] == 80
    point = data["metrics"]["pipeline/sweep-point/metrics.json"]["data"]
    assert point["setting"] == "params"  # params.sampdetox as it is (DVC's view leaves out the empty "chosen")
    assert {"mean_asr", "mean_pa", "mean_ca_drop"} <= set(point["val"]) <= set(point["heldout"])
