"""`detoxops attack visibility` through typer's CliRunner on tiny digits data: the attack_table layout
(``--runs``/``--attacks``) and the one-attack mode (``--clean``/``--poisoned``/``--victim``)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from detoxops.cli import app

runner = CliRunner()
TARGET = 0


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """``clean_test/`` (40 digits, 16×16) and two Blended attacks (α 0.1 and 0.5) with their test sets and a small
    small_cnn victim trained for a few steps on the strong attack's poisoned set."""
    from detoxops.attacks import registry
    from detoxops.attacks.poisoning import poison_datasets
    from detoxops.config import DataConfig
    from detoxops.data import load_source
    from detoxops.models import build_classifier, save_classifier

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    splits = load_source("digits", DataConfig(image_size=16, train_per_class=20, test_per_class=4), progress=False,
                         cache=False)
    train, test = splits["train"], splits["test"]
    test.save(root / "clean_test")
    for name, alpha in (("weak", 0.1), ("strong", 0.5)):
        attack = registry.create("blended", target=TARGET, poison_ratio=0.2, seed=0, image_size=16,
                                 num_classes=train.num_classes, options={"alpha": alpha})
        poisoned_train, triggered = poison_datasets(attack, train, test)
        triggered.save(root / name / "test")
        model = build_classifier("small_cnn", train.num_classes, 3, 16, seed=0, width=4)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        x = torch.from_numpy(np.asarray(poisoned_train.images)).permute(0, 3, 1, 2).float() / 255
        y = torch.from_numpy(np.asarray(poisoned_train.labels))
        model.train()
        for _ in range(10):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        save_classifier(model.eval(), root / name / "victim")
    return root


def test_runs_layout_writes_rows_summary_and_orders_visibility(runs_dir, tmp_path):
    from detoxops.data import ImageSet

    out, summary = tmp_path / "fig2.csv", tmp_path / "summary.json"
    res = run("attack", "visibility", "--runs", runs_dir, "--attacks", "weak,strong", "--out", out,
              "--summary-json", summary, "--eta-step", "0.05", "--no-progress", "--threads", "1")
    assert res.exit_code == 0, res.output
    rows = read_csv(out)
    assert list(rows[0]) == ["attack", "index", "visibility", "robustness"]
    n_triggered = {name: len(ImageSet.load(runs_dir / name / "test")) for name in ("weak", "strong")}
    assert n_triggered["weak"] == 36  # 4 per class, the 4 target-class images dropped
    for name, n in n_triggered.items():
        assert sum(r["attack"] == name for r in rows) == n
    clean_src = set(ImageSet.load(runs_dir / "clean_test").source_index.tolist())
    assert {int(r["index"]) for r in rows} <= clean_src
    v = {name: np.array([float(r["visibility"]) for r in rows if r["attack"] == name]) for name in n_triggered}
    eta = np.array([float(r["robustness"]) for r in rows])
    assert all(((x > 0) & (x <= 1)).all() for x in v.values())
    assert ((eta >= 0) & ((eta <= 1) | np.isinf(eta))).all()
    grid = np.round(np.arange(0, 1.0001, 0.05), 10)
    assert np.isin(eta[np.isfinite(eta)], grid).all()
    assert v["strong"].mean() > 2 * v["weak"].mean()  # α 0.5 is far more visible than α 0.1

    stats = json.loads(summary.read_text())
    assert stats["settings"]["eta_step"] == 0.05
    for name, n in n_triggered.items():
        s = stats["attacks"][name]
        assert s["n"] == n and s["target"] == TARGET and 0 <= s["hits"] <= n
        assert math.isclose(s["v_mean"], v[name].mean(), rel_tol=1e-9)
        assert s["hits"] == sum(float(r["robustness"]) > 0 for r in rows if r["attack"] == name)
    assert "| weak | 36 |" in res.output and "| strong | 36 |" in res.output


def test_single_attack_mode_matches_the_library_and_respects_max_images(runs_dir, tmp_path):
    from detoxops.attacks.visibility import visibility
    from detoxops.data import ImageSet

    out = tmp_path / "one.csv"
    res = run("attack", "visibility", "--clean", runs_dir / "clean_test", "--poisoned", runs_dir / "strong",
              "--victim", runs_dir / "strong" / "victim", "--out", out, "--max-images", "10", "--no-progress")
    assert res.exit_code == 0, res.output
    rows = read_csv(out)
    assert len(rows) == 10 and {r["attack"] for r in rows} == {"blended"}  # name from the set's meta
    clean, triggered = ImageSet.load(runs_dir / "clean_test"), ImageSet.load(runs_dir / "strong" / "test")
    pos = {int(s): i for i, s in enumerate(clean.source_index)}
    tpos = {int(s): i for i, s in enumerate(triggered.source_index)}
    idx = [int(r["index"]) for r in rows]
    expected = visibility(np.asarray(clean.images[[pos[i] for i in idx]]),
                          np.asarray(triggered.images[[tpos[i] for i in idx]]))
    assert np.allclose([float(r["visibility"]) for r in rows], expected)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attacks", "weak"], "--runs"),
        (["--runs", "{runs}"], "--attacks"),
        (["--runs", "{runs}", "--attacks", "nope"], "nope"),
        (["--runs", "{runs}", "--attacks", "weak", "--victim", "{runs}/weak/victim"], "cannot be combined"),
        (["--clean", "{runs}/clean_test"], "missing: --poisoned, --victim"),
        (["--clean", "{runs}/clean_test", "--poisoned", "{runs}/weak", "--victim", "{runs}/absent"], "absent"),
    ],
)
def test_bad_inputs_fail_with_a_clear_message(runs_dir, tmp_path, args, message):
    res = run("attack", "visibility", *[a.format(runs=runs_dir) for a in args], "--out", tmp_path / "x.csv",
              "--no-progress")
    assert res.exit_code != 0 and message in res.output
    assert not (tmp_path / "x.csv").exists()


def test_existing_output_needs_force(runs_dir, tmp_path):
    out = tmp_path / "x.csv"
    out.write_text("keep\n")
    res = run("attack", "visibility", "--runs", runs_dir, "--attacks", "weak", "--out", out, "--no-progress")
    assert res.exit_code != 0 and "--force" in res.output and out.read_text() == "keep\n"
