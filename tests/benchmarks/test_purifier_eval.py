"""benchmarks/purifier_eval.py's victim task on 20 CIFAR-10 test images with the shipped purifier and the committed
clean store victim: its numbers equal a direct ``evaluate_denoising`` call, the markdown shows them, and a rerun
keeps the stored entry instead of recomputing it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import purifier_eval as bench  # noqa: E402


def test_victim_task_matches_a_direct_evaluation_and_resumes(cifar_archive, tmp_path, capsys):
    if not (ROOT / "victims" / "cifar10-fast" / "clean").is_dir():
        pytest.skip("the committed CIFAR-10 victim store is not in this checkout")
    from detoxops.data.archive_sample import read_per_class
    from detoxops.diffusion import load_purifier
    from detoxops.diffusion.train import evaluate_denoising
    from detoxops.diffusion.unet import shipped_purifier_dir
    from detoxops.models import load_classifier, predict

    args = ["--data", str(cifar_archive), "--purifier", "shipped=cifar10", "--tasks", "victim", "--n", "20",
            "--levels", "20,120", "--restore-stride", "60", "--json", str(tmp_path / "r.json"),
            "--md", str(tmp_path / "r.md")]
    assert bench.main(args) == 0
    entries = json.loads((tmp_path / "r.json").read_text())["entries"]
    (key, entry), = entries.items()
    assert "/victim/cifar10-fast/clean@" in key and key.endswith("/n20/ddim60-t20-120/0")

    images, labels = read_per_class(cifar_archive, "test", 2)
    order = np.argsort(np.concatenate([np.arange((labels == c).sum()) for c in range(10)]) * 10 + labels,
                       kind="stable")
    victim = load_classifier("cifar10-fast/clean")
    direct = evaluate_denoising(load_purifier(shipped_purifier_dir("cifar10-32")), images[order], (20, 120),
                                mode="ddim", stride=60, seed=0, batch_size=64,
                                classify=lambda b: predict(victim, b), labels=labels[order])
    for t, m in direct.items():
        assert entry["metrics"][str(t)] == pytest.approx(m)
        assert m["acc_clean"] == pytest.approx(100.0 * (predict(victim, images[order]) == labels[order]).mean())
    md = (tmp_path / "r.md").read_text()
    assert "accuracy (%) on restorations" in md and f"| {direct[120]['acc_restored']:.1f} |" in md

    capsys.readouterr()
    assert bench.main(args) == 0
    assert "done before, kept" in capsys.readouterr().out

    # the stochastic sampler is its own entry (same noised inputs, other restorations), shown as such
    assert bench.main([*args, "--restore-eta", "1"]) == 0
    entries = json.loads((tmp_path / "r.json").read_text())["entries"]
    stochastic = next(e for k, e in entries.items() if k.endswith("/n20/ddim60-eta1-t20-120/0"))
    for t in ("20", "120"):  # the same noised inputs (the sampler's noise is a stream of its own)
        for k in ("psnr_noisy", "psnr_x0_oneshot", "acc_oneshot"):
            assert stochastic["metrics"][t][k] == entry["metrics"][t][k]
    assert stochastic["metrics"]["120"]["psnr_restored"] != entry["metrics"]["120"]["psnr_restored"]
    assert "| ddim60-eta1-t20-120 | 120 |" in (tmp_path / "r.md").read_text()
