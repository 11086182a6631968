"""benchmarks/baselines_cifar10.py on the committed BadNets store victim with tiny budgets (10 clean + 4 triggered
held-out CIFAR-10 images, two seeds, ZIP with 2 steps, Sancdifi with 8 masks and short DDIM restorations): the rows'
numbers against a direct evaluation, the query count, the per-seed draw, and resume from the cache."""

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

import baselines_cifar10 as bench  # noqa: E402

TINY = ["--attacks", "badnets", "--defenses", "none,zip,sancdifi", "--seeds", "0,1", "--n-clean", "10",
        "--n-poisoned", "4", "--batch", "7",
        "--set", "baselines.zip.steps=2", "--set", "baselines.sancdifi.n_masks=8",
        "--set", "baselines.sancdifi.sampler=ddim", "--set", "baselines.sancdifi.ddim_stride=100",
        "--set", "baselines.sancdifi.t_salient=200", "--set", "baselines.sancdifi.t_rest=100"]


@pytest.fixture(scope="module")
def victim_store():
    if not (ROOT / "victims" / "cifar10-fast" / "badnets").is_dir():
        pytest.skip("the committed CIFAR-10 victim store is not in this checkout")


def test_rows_queries_and_resume(cifar_archive, victim_store, tmp_path, monkeypatch):
    from detoxops.metrics import clean_accuracy, percent
    from detoxops.models import load_classifier, predict

    args = [*TINY, "--data", str(cifar_archive), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "r.json"),
            "--md", str(tmp_path / "r.md")]
    assert bench.main(args) == 0
    record = json.loads((tmp_path / "r.json").read_text())
    rows = {(r["seed"], r["defense"]): r for r in record["rows"]}
    assert len(rows) == 6 and record["machine"]["threads"] == 1 and record["victim_tta"] == 0

    # the no-defense row is the victim's own accuracy on the drawn held-out images
    clean = bench.clean_test(str(cifar_archive))
    half = bench.split_indices(clean, "test", len(clean), seed=0)
    cidx, pidx = bench.pick(clean, half, 10, 4, 0, seed=1)
    assert len(cidx) == 10 and len(pidx) == 4 and np.isin(cidx, half).all() and (clean.labels[pidx] != 0).all()
    model = load_classifier("cifar10-fast/badnets").float().eval()
    assert rows[1, "none"]["ca"] == pytest.approx(percent(clean_accuracy(predict(model, clean.images[cidx]),
                                                                         clean.labels[cidx])))
    assert not np.array_equal(cidx, bench.pick(clean, half, 10, 4, 0, seed=0)[0])  # a seed draws other images
    # black box: Sancdifi sends the image plus one query per mask; ZIP and none send none
    assert rows[0, "sancdifi"]["queries_per_image"] == 1 + 8
    assert rows[0, "zip"]["queries_per_image"] == 0 == rows[0, "none"]["queries_per_image"]
    summary = {(s["attack"], s["defense"]): s for s in record["summary"]}
    assert summary["badnets", "zip"]["paper"] == [88.12, 86.52, 7.17]
    assert summary["badnets", "none"]["ca"] == pytest.approx(np.mean([rows[s, "none"]["ca"] for s in (0, 1)]), abs=0.01)
    assert "| badnets | sancdifi |" in (tmp_path / "r.md").read_text()

    # resume: every defended output is read back from the cache, none is computed again
    def no_compute(*a, **k):
        raise AssertionError("recomputed a cached output")

    monkeypatch.setattr(bench, "defend", no_compute)
    assert bench.main([*args[:-4], "--out", str(tmp_path / "r2.json"), "--md", str(tmp_path / "r2.md")]) == 0
    again = json.loads((tmp_path / "r2.json").read_text())["rows"]
    assert [{k: v for k, v in r.items()} for r in again] == record["rows"]

    # one table from several runs: rows at another n stay their own rows
    other = {**record, "rows": [{**r, "n_clean": 20} for r in record["rows"] if r["defense"] == "sancdifi"]}
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert bench.main(["--combine", str(tmp_path / "r.json"), str(tmp_path / "other.json"),
                       "--md", str(tmp_path / "both.md")]) == 0
    table = (tmp_path / "both.md").read_text()
    assert "| badnets | sancdifi | 0, 1 | 10 + 4 |" in table and "| badnets | sancdifi | 0, 1 | 20 + 4 |" in table


def test_explain_measures_the_trigger_left_in_zips_ranges(cifar_archive, victim_store, tmp_path):
    """BadNets' white 3x3 patch is achromatic: the grayscale projection keeps almost all of it, 2x2 pooling part."""
    out = tmp_path / "explain.json"
    # 300 clean images: on 20 the retrained BadNets victim scored 80 / 80 (one image is 5 points); on 300, 90.3 / 85.0
    assert bench.main(["--explain", "--attacks", "badnets", "--n-clean", "300", "--data", str(cifar_archive),
                       "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    shares = record["zip_trigger_range_share"]["badnets"]
    assert shares["gray"] > 0.9 and 0.2 < shares["pool"] < 0.95
    acc = record["victim_accuracy_on_zip_ranges"]["badnets"]
    assert set(acc) == {"clean", "gray", "pool"} and all(0.0 <= v <= 100.0 for v in acc.values())
    assert acc["gray"] < acc["clean"]  # a colour victim loses accuracy on grayscale images


def test_restoration_measures_on_a_planted_patch(cifar_archive, victim_store):
    """BDMAE (cheap settings) on BadNets images: the shares are fractions, the trigger is 9 of 1,024 pixels."""
    import torch

    from detoxops.config import BaselinesConfig
    from detoxops.defenses.catalog import build_defense
    from detoxops.diffusion import load_purifier
    from detoxops.models import load_classifier
    from detoxops.models.store import victim_attack

    torch.manual_seed(0)
    clean = bench.clean_test(str(cifar_archive))
    model, attack = load_classifier("cifar10-fast/badnets").float().eval(), victim_attack("cifar10-fast/badnets")
    cfg = BaselinesConfig(bdmae={"rp_init_in": 2, "rp_init_out": 2, "rp_refine": 2, "restore_rounds": 1,
                                 "inpaint_stride": 500})
    d = build_defense("bdmae", load_purifier(bench.SHIPPED_PURIFIER), classifier=model, baselines=cfg)
    idx = np.arange(0, 10_000, 1_000)[:6]  # the test split is stored class by class: one image of six classes
    m = bench.restoration_measures(d, model, attack, clean.images[idx], clean.labels[idx], seed=0)
    assert m["n_images"] == int((clean.labels[idx] != attack.target).sum()) == 5
    assert m["trigger_pixel_share"] == pytest.approx(9 / 1024, abs=2 / 1024)
    for k in ("clean_pixels_restored", "trigger_pixels_restored", "other_pixels_restored", "clean_label_kept"):
        assert 0.0 <= m[k] <= 1.0
    assert 0.0 <= m["trigger_map_auc"] <= 1.0


def test_trigger_survival_on_the_identity_and_a_restoration(cifar_archive, victim_store):
    """With no defense the whole trigger is left (share 1) and the ASR is the victim's own; the amplitude sweep's
    end points are the clean and the triggered images; a global restoration leaves part of the trigger."""
    from detoxops.defenses.catalog import build_defense
    from detoxops.diffusion import load_purifier
    from detoxops.metrics import attack_success_rate, clean_accuracy, percent
    from detoxops.models import load_classifier, predict
    from detoxops.models.store import victim_attack

    clean = bench.clean_test(str(cifar_archive))
    model, attack = load_classifier("cifar10-fast/badnets").float().eval(), victim_attack("cifar10-fast/badnets")
    idx = np.arange(0, 10_000, 1_000)[:6]
    x, y = clean.images[idx], clean.labels[idx]
    m = bench.trigger_survival({"none": build_defense("none", None)}, load_purifier(bench.SHIPPED_PURIFIER), model,
                               attack, x, y, seed=0, amplitudes=[0.0, 1.0], levels=[20], batch=4)
    keep = y != attack.target
    triggered = attack.poison_test_arrays(x[keep], y[keep])[0]
    own_asr = percent(attack_success_rate(predict(model, triggered), attack.target))
    assert m["n_images"] == 5 and m["defenses"]["none"]["share_left"] == pytest.approx(1.0)
    assert m["defenses"]["none"]["asr"] == m["victim_asr_at_amplitude"]["1.0"] == pytest.approx(own_asr)
    assert m["victim_asr_at_amplitude"]["0.0"] == percent(attack_success_rate(predict(model, x[keep]), attack.target))
    assert m["defenses"]["none"]["clean_accuracy"] == m["victim_clean_accuracy"] == pytest.approx(
        percent(clean_accuracy(predict(model, x[keep]), y[keep])))
    restored = m["global_restoration"]["20"]
    assert 0.0 < restored["share_left"] < 1.0 and 0.0 <= restored["asr"] <= 100.0


def test_survival_mode_writes_per_attack_and_keeps_finished_attacks(cifar_archive, victim_store, tmp_path,
                                                                     monkeypatch):
    out = tmp_path / "survival.json"
    args = ["--survival", "--attacks", "badnets", "--explain-defenses", "none", "--survival-levels", "10",
            "--survival-amplitudes", "1.0", "--n-poisoned", "4", "--batch", "4", "--data", str(cifar_archive),
            "--out", str(out)]
    assert bench.main(args) == 0
    first = json.loads(out.read_text())["survival"]["badnets"]
    assert first["n_images"] == 4 and first["defenses"]["none"]["share_left"] == pytest.approx(1.0)

    def no_compute(*a, **k):
        raise AssertionError("a finished attack was measured again")

    monkeypatch.setattr(bench, "trigger_survival", no_compute)
    assert bench.main(args) == 0
    assert json.loads(out.read_text())["survival"]["badnets"] == first
    with pytest.raises(AssertionError, match="measured again"):  # other settings: not the same measurement
        bench.main([*args[:-2], "--n-poisoned", "5", "--out", str(out)])
