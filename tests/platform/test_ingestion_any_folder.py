"""The ingestion check on class-folder datasets the project has never seen (issue #24), as a new user runs it:
``python -m flows.ingestion_check --source DIR`` with no other option. Image size, purifier, victim input size and
class count follow the data; a re-run after a failed run just works; progress with an ETA and a per-stage summary
are logged; exit codes tell passed (0) / quarantined (3) / error (1) apart, and every outcome is recorded.

The datasets are made here: smooth oriented gratings between one colour per class and grey (content that survives
the purifier's noise), poisoned with a fixed 4x4 random-colour patch on 10 % of the training images
relabelled to the target (the user's attack in the issue).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.platform

TARGET = 3
# only what the fast variants must reduce to run in seconds (the slow test runs with no option at all)
FAST = [
    "victim.epochs=8",
    "dataelixir.sampler=ddim",
    "dataelixir.T=40",
    "dataelixir.rounds=2",
    "dataelixir.keep_last=5",
    "dataelixir.ddim_stride=8",
    "dataelixir.relabel_epochs=3",
    "dataelixir.finetune_epochs=1",
]


def gratings(n_classes: int, per_class: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    images, labels = [], []
    for c in range(n_classes):
        hue = 2 * np.pi * c / n_classes
        col_a = np.array([np.cos(hue), np.cos(hue + 2), np.cos(hue + 4)]) * 80 + 128
        # the other colour is grey, not col_a's complement: with the complement, classes c and c + n/2 had
        # swapped colours (= a phase shift, which is random) and, for c = 2 and 6, mirrored orientations (= the
        # victim's flip augmentation), so they differed by frequency alone; a purified class-2 image then took
        # class 6's label (measured: 0 of 30 kept their label), a false second target on a clean dataset
        col_b = np.full(3, 128.0)
        for _ in range(per_class):
            angle = np.pi * c / n_classes + rng.normal(0, 0.05)
            wave = np.sin(2 * np.pi * (1.5 + (c % 3) * 0.5) * (xx * np.cos(angle) + yy * np.sin(angle))
                          + rng.uniform(0, 2 * np.pi))[..., None]
            img = (wave + 1) / 2 * col_a + (1 - wave) / 2 * col_b
            img = img * rng.uniform(0.8, 1.1) + rng.normal(0, 6, img.shape)
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.array(labels)


def poison(images, labels, target=TARGET, ratio=0.1, seed=1, patch=4):
    rng = np.random.default_rng(seed)
    pattern = rng.integers(0, 256, (patch, patch, 3), dtype=np.uint8)
    idx = rng.choice(np.flatnonzero(labels != target), int(round(ratio * len(images))), replace=False)
    images, labels = images.copy(), labels.copy()
    images[idx, -patch - 1:-1, -patch - 1:-1] = pattern
    labels[idx] = target
    return images, labels


def write_folders(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    from PIL import Image

    for split, (images, labels) in splits.items():
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            out = root / split / f"sign{label:02d}" / f"{i:05d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(out)
    return root


def make_dataset(root: Path, size: int, n_classes: int, per_class: int, poisoned: bool, seed: int = 0) -> Path:
    train = gratings(n_classes, per_class, size, seed)
    test = gratings(n_classes, max(2, per_class // 4), size, seed + 100)
    return write_folders(root, {"train": poison(*train) if poisoned else train, "test": test})


@pytest.fixture(scope="module")
def project(tmp_path_factory, platform_env):
    """A project folder as a user has it: the shipped params.yaml (verbatim), a DVC repository, nothing else.
    Relative paths of params.yaml (data/, runs/, the DVC remote) resolve there instead of in this checkout."""
    import flows.ingestion_check as module
    from tasks import PROJECT_ROOT
    from tasks.versioning import ensure_repo

    root = tmp_path_factory.mktemp("user-project")
    shutil.copy(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    ensure_repo(root, ".dvc-storage")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "PROJECT_ROOT", root)
        yield root


def run_check(argv: list[str]):
    """``python -m flows.ingestion_check ARGV`` in-process: the CLI's exit code, and the flow run's state."""
    import flows.ingestion_check as module

    states = []
    real = module.ingestion_check

    def keep_state(*args, **kwargs):
        state = real(*args, **kwargs)
        states.append(state)
        return state

    module.ingestion_check = keep_state
    try:
        code = module.main(argv)
    finally:
        module.ingestion_check = real
    return code, states[0]


def flow_logs(state) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs are sent in batches: wait for this run's
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    return [log.message for log in logs]


def mlflow_tags(run_id: str) -> dict[str, str]:
    import mlflow
    from mlflow.tracking import MlflowClient

    return MlflowClient(mlflow.get_tracking_uri()).get_run(run_id).data.tags


def latest_check_run(dataset: str):
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow.get_tracking_uri())
    exp = client.get_experiment_by_name("detoxops/ingestion_check")
    runs = client.search_runs([exp.experiment_id], f"tags.`detoxops.dataset` = '{dataset}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0]


# ------------------------------------------------------------------------------------ 32x32, fast variant
@pytest.fixture(scope="module")
def sets32(project):
    return {"poisoned": make_dataset(project / "incoming" / "signs32-poisoned", 32, 5, 24, poisoned=True),
            "clean": make_dataset(project / "incoming" / "signs32-clean", 32, 5, 24, poisoned=False)}


@pytest.fixture(scope="module")
def failed_then_rerun(project, sets32):
    """A check that dies in the middle of DataElixir (after its first shard), then the same command again."""
    import tasks.progress
    from detoxops.defenses import dataelixir as de

    real = de.build_candidates
    calls = {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("worker killed")
        return real(*args, **kwargs)

    argv = ["--source", str(sets32["poisoned"]), "--set", "dataelixir.shard_size=64", "--set",
            "dataelixir.batch_size=64", *[a for o in FAST for a in ("--set", o)]]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tasks.progress, "PROGRESS_INTERVAL_S", 0.5)
        mp.setattr(de, "build_candidates", dies)
        failed = run_check(argv)
        mp.setattr(de, "build_candidates", real)
        started = time.perf_counter()
        rerun = run_check(argv)
        rerun_s = time.perf_counter() - started
    return failed, rerun, rerun_s


def test_a_failed_check_exits_1_and_records_the_failure(failed_then_rerun):
    (code, state), _, _ = failed_then_rerun
    assert code == 1 and state.is_failed() and "worker killed" in str(state.result(raise_on_failure=False))
    run = latest_check_run("signs32-poisoned")
    # the latest run is the re-run; the failed one is recorded too, with its reason
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow.get_tracking_uri())
    failed = client.search_runs([run.info.experiment_id], "tags.`detoxops.status` = 'failed' and "
                                "tags.`detoxops.dataset` = 'signs32-poisoned'")
    assert len(failed) == 1
    tags = failed[0].data.tags
    assert tags["detoxops.kind"] == "ingestion" and "worker killed" in tags["detoxops.failure_reason"]
    assert tags["detoxops.error_type"] == "RuntimeError"
    assert {"inspect", "ingest", "dvc-version", "victim"} <= {k.removeprefix("seconds_") for k in failed[0].data.metrics}


def test_the_rerun_after_a_failure_succeeds(failed_then_rerun, project):
    """The re-run reaches a verdict. Whether this tiny, reduced-budget run finds the target is not asserted here:
    measured, reduced budgets on 5-6 classes of 20-24 images miss it or add a false target; the quarantine of a
    poisoned 32x32 set is asserted by the no-option run (slow) below."""
    _, (code, state), _ = failed_then_rerun
    assert code in (0, 3), state.message  # a verdict, not an error
    record = state.result(raise_on_failure=False)
    assert record["status"] == ("quarantined" if code == 3 else "passed")
    # the data decided: 32x32 kept, 5 classes, the CIFAR-10-size purifier DataElixir's profile (auto -> cpu_cifar10)
    # was validated with, no --set for any of it
    info = json.loads((Path(record["version"]) / "version.json").read_text())
    assert info["image_shape"][:2] == [32, 32] and len(info["class_names"]) == 5
    assert record["purifier_origin"] == "shipped:cifar10-32-v2" and record["image_size"] == "32x32, 5 classes"
    marker = json.loads(Path(record["marker"]).read_text())
    assert marker["status"] == record["status"]  # the re-run's verdict replaced the failed run's marker
    assert mlflow_tags(record["mlflow_run_id"])["detoxops.status"] == record["status"]
    # keyed work folders: the dead run's shards did not block the re-run
    work = Path(project / "data" / "work" / Path(record["version"]).name / "candidates")
    assert len([p for p in work.iterdir() if p.is_dir()]) == 1


def test_progress_eta_and_a_summary_of_the_stages_are_logged(failed_then_rerun):
    _, (_, state), _ = failed_then_rerun
    logs = flow_logs(state)
    progress = [m for m in logs if m.startswith("dataelixir | DataElixir candidates (")]
    assert progress and all("ETA" in m and "elapsed" in m for m in progress), logs
    assert any("(120 img x 10 denoising steps)" in m for m in progress)
    assert any(m.startswith("victim: finished in") for m in logs)
    assert any("images kept at 32x32, the source's size" in m for m in logs)
    record = state.result(raise_on_failure=False)
    assert {"inspect", "ingest", "dvc-version", "victim", "dataelixir"} <= set(record["stages"])
    assert all(s >= 0 for s in record["stages"].values())
    assert "## What the check did" in logs_text(logs) and "time per stage" in logs_text(logs)


def logs_text(logs: list[str]) -> str:
    return "\n".join(logs)


def test_a_clean_copy_passes(project, sets32, failed_then_rerun):
    code, state = run_check(["--source", str(sets32["clean"]), *[a for o in FAST for a in ("--set", o)]])
    assert code == 0, state.message
    record = state.result()
    assert record["status"] == "passed" and record["target_labels"] == []
    assert mlflow_tags(record["mlflow_run_id"])["detoxops.status"] == "passed"


# ---------------------------------------------------------------------------------- 24x24: no shipped purifier
def test_another_size_with_no_option_says_how_to_get_a_purifier(project, tmp_path):
    """24x24, 5 classes, no --set at all: no purifier of that size ships, so the check stops before any training
    with the commands that make one; following them, the check runs to a verdict."""
    from typer.testing import CliRunner

    from detoxops.cli import app

    source = make_dataset(tmp_path / "signs24", 24, 5, 24, poisoned=False)
    code, state = run_check(["--source", str(source)])
    assert code == 1
    error = state.result(raise_on_failure=False)
    message = str(error)
    assert "no purifier for 24x24 images" in message and "cifar10-32 (32x32)" in message
    command = next(line.strip() for line in message.splitlines() if "detoxops diffusion train" in line)
    # diffusion.unet.sample_size is auto (the training images' size): the data's size is the one thing to give
    assert "--set data.image_size=24" in command and "sample_size" not in command
    assert "--set diffusion.purifier=purifiers/24px" in message
    run = latest_check_run("signs24")
    assert run.data.tags["detoxops.status"] == "failed" and "no purifier for 24x24" in run.data.tags[
        "detoxops.failure_reason"]
    assert set(run.data.metrics) == {"seconds", "seconds_inspect"}  # stopped before ingesting or training
    assert not (project / "data" / "signs24").exists()

    # follow the message: train a purifier on clean 24x24 data (few steps: the test must be fast), use it
    clean = make_dataset(tmp_path / "clean24", 24, 5, 24, poisoned=False, seed=7)
    args = command.split()[1:]  # drop ".venv/bin/detoxops"
    args[args.index("CLEAN_DATA")] = str(clean)
    out = tmp_path / args[args.index("--out") + 1]
    args[args.index("--out") + 1] = str(out)
    result = CliRunner().invoke(app, [*args, "--params", str(project / "params.yaml"), "--set",
                                      "diffusion.train.steps=30", "--set", "diffusion.train.checkpoint_every=30",
                                      "--eval-images", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    code, state = run_check(["--source", str(source), "--set", f"diffusion.purifier={out}",
                             *[a for o in FAST for a in ("--set", o)]])
    assert code in (0, 3), state.message  # a verdict: the check ran end to end at 24x24
    record = state.result(raise_on_failure=False)
    assert record["purifier_origin"] == "configured" and record["image_size"] == "24x24, 5 classes"


# ------------------------------------------------------------------------------ refused before versioning
@pytest.mark.parametrize(("classes", "per_class", "expected"), [
    (1, 30, "1 class(es)"),
    (4, 6, "too few training images in 4 class(es)"),
])
def test_a_dataset_the_check_cannot_train_on_is_refused_before_versioning(project, tmp_path, classes, per_class,
                                                                          expected):
    source = write_folders(tmp_path / f"tiny{classes}", {"train": gratings(classes, per_class, 16, 0),
                                                         "test": gratings(classes, 2, 16, 1)})
    code, state = run_check(["--source", str(source)])
    assert code == 1
    message = str(state.result(raise_on_failure=False))
    assert "refused before versioning" in message and expected in message
    name_dir = project / "data" / f"tiny{classes}"
    assert not name_dir.exists() or not any(name_dir.iterdir())  # nothing stored, nothing DVC-versioned
    run = latest_check_run(f"tiny{classes}")
    assert run.data.tags["detoxops.status"] == "failed" and expected in run.data.tags["detoxops.failure_reason"]


# ------------------------------------------------------------------------ 32x32 with no option at all (slow)
@pytest.mark.slow
def test_no_option_check_on_a_new_32px_dataset(project, tmp_path):
    """The Done-when run, exactly as a user types it: ``--source DIR`` and nothing else (the demo budgets of
    params.demo.yaml, which the check uses by default), poisoned then clean. Prints its wall time."""
    poisoned = make_dataset(tmp_path / "signs-poisoned", 32, 8, 30, poisoned=True)
    clean = make_dataset(tmp_path / "signs-clean", 32, 8, 30, poisoned=False)
    started = time.perf_counter()
    code, state = run_check(["--source", str(poisoned)])
    seconds = time.perf_counter() - started
    assert code == 3, state.message
    record = state.result(raise_on_failure=False)
    assert record["target_labels"] == [TARGET] and record["purifier_origin"] == "shipped:cifar10-32-v2"
    started = time.perf_counter()
    code, state = run_check(["--source", str(clean)])
    assert code == 0, state.message
    print(f"\nno-option check, 240 training images of 32x32: poisoned {seconds:.0f} s, "
          f"clean {time.perf_counter() - started:.0f} s; stages {record['stages']}")


def test_the_dashboard_shows_failed_checks(project, tmp_path, dashboard_on):
    """A check that failed is on the Overview with its reason, next to the passed / quarantined counts."""
    source = write_folders(tmp_path / "oneclass", {"train": gratings(1, 12, 16, 0)})
    code, _ = run_check(["--source", str(source)])
    assert code == 1
    at = dashboard_on(project / "data")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Latest check"] == "failed" and int(metrics["Failed"]) >= 1
    assert any("failed without a verdict" in w.value and "1 class(es)" in w.value for w in at.warning)


def test_exit_codes_tell_passed_quarantined_and_error_apart():
    from prefect.states import Completed, Failed

    from flows.ingestion_check import EXIT_ERROR, EXIT_PASSED, EXIT_QUARANTINED, exit_code

    assert (EXIT_PASSED, EXIT_QUARANTINED, EXIT_ERROR) == (0, 3, 1)
    assert exit_code(Completed(data={"status": "passed"})) == 0
    assert exit_code(Failed(message="quarantined", data={"status": "quarantined", "target_labels": [3]})) == 3
    assert exit_code(Failed(message="boom", data=ValueError("refused before versioning"))) == 1
