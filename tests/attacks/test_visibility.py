import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from detoxops.attacks import registry
from detoxops.attacks.visibility import (
    robustness,
    summarise,
    visibility,
    visibility_robustness_rows,
    write_rows_csv,
)


@pytest.mark.parametrize("name", ["badnets", "blended", "sig", "wanet", "bpp", "ftrojan"])
def test_visibility_matches_skimage(cifar_small, name):
    _, _, x, _ = cifar_small
    clean = x[:12]
    poisoned = registry.create(name).apply_trigger(clean)
    v = visibility(clean, poisoned)
    ref = np.array([(1 - structural_similarity(c, p, channel_axis=-1, data_range=255)) / 2
                    for c, p in zip(clean, poisoned, strict=True)])
    assert np.allclose(v, ref, atol=1e-9)


def test_visibility_orders_triggers(cifar_small):
    _, _, x, _ = cifar_small
    names = ("badnets", "blended", "sig", "ftrojan")
    v = {n: visibility(x, registry.create(n).apply_trigger(x)).mean() for n in names}
    assert np.allclose(visibility(x, x), 0)
    # a 9-pixel patch and an invisible frequency trigger barely move the mean SSIM; whole-image blends do,
    # and the +-40 sinusoid most (SampDetox table 2: SIG 0.185, the highest)
    assert v["ftrojan"] < 0.01 and v["badnets"] < 0.01
    assert 0.05 < v["blended"] < v["sig"]
    assert 0.15 < v["sig"] < 0.22


def _patch_classifier(target=0, size=32):
    """Target when the mean of the bottom-right 3x3 patch is above 0.9, else class 1."""
    def predict(x01):
        patch = x01[:, :, size - 3 :, size - 3 :].mean(dim=(1, 2, 3))
        return torch.where(patch > 0.9, torch.tensor(target), torch.tensor(1))
    return predict


def _brute_force(poisoned, predict, target, etas, seed, space):
    x = torch.from_numpy(poisoned).permute(0, 3, 1, 2).float() / 255
    base = 2 * x - 1 if space == "diffusion" else x
    eps = torch.randn(base.shape, generator=torch.Generator().manual_seed(seed))
    out = []
    for i in range(len(x)):
        found = np.inf
        for eta in etas:
            m = (1 - eta) * base[i : i + 1] + eta * eps[i : i + 1]
            m = ((m + 1) / 2 if space == "diffusion" else m).clamp(0, 1)
            if int(predict(m)[0]) != target:
                found = eta
                break
        out.append(found)
    return np.array(out)


@pytest.mark.parametrize(("space", "expected"), [("diffusion", 0.2), ("unit", 0.1)])
def test_robustness_of_badnets_on_a_patch_classifier(cifar_small, space, expected):
    _, _, x, _ = cifar_small
    poisoned = registry.create("badnets").apply_trigger(x[:40])
    predict = _patch_classifier()
    eta = robustness(poisoned, predict, 0, seed=3, space=space)
    etas = np.linspace(0, 1, 101)
    assert np.array_equal(eta, _brute_force(poisoned, predict, 0, etas, 3, space))
    # patch mean ~ (2 - eta)/2 in the diffusion space, (1 - eta) in [0, 1]: flips near 0.2 / 0.1
    assert abs(np.median(eta) - expected) < 0.05


def test_robustness_edge_cases(cifar_small):
    _, _, x, _ = cifar_small
    clean = x[:5]
    assert (robustness(clean, _patch_classifier(), 0) == 0).all()  # never predicted as the target
    always = lambda t: torch.zeros(len(t), dtype=torch.long)  # noqa: E731
    eta = robustness(clean, always, 0)
    assert np.isinf(eta).all()
    s = summarise(np.array([0.1, 0.3, np.inf]))
    assert s["n"] == 3 and s["n_inf"] == 1 and s["mean"] == pytest.approx(0.2) and s["median"] == pytest.approx(0.2)
    with pytest.raises(ValueError):
        robustness(clean, always, 0, etas=[1.5])


def test_rows_and_csv(tmp_path, cifar_small):
    _, _, x, _ = cifar_small
    poisoned = registry.create("badnets").apply_trigger(x[:6])
    rows = visibility_robustness_rows("badnets", x[:6], poisoned, _patch_classifier(), 0)
    assert len(rows) == 6 and {"attack", "index", "v", "eta_r"} <= set(rows[0])
    path = write_rows_csv(rows, tmp_path / "robustness" / "visibility_robustness.csv")
    assert path.read_text().splitlines()[0] == "attack,index,v,eta_r"


def test_figure2_points_sample_non_target_images(cifar_small):
    from detoxops.attacks.visibility import figure2_points

    _, _, x, y = cifar_small
    rows = figure2_points(registry.create("badnets"), x, y, _patch_classifier(), samples=30, seed=1)
    idx = [r["index"] for r in rows]
    assert len(rows) == 30 and len(set(idx)) == 30 and (y[idx] != 0).all()
    assert all(r["attack"] == "badnets" and 0 < r["v"] < 0.05 and 0.05 < r["eta_r"] < 0.4 for r in rows)
