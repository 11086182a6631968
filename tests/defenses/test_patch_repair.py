"""Patch repair (issue #20): the context map, the gate, the region and the repair, with an exact denoiser so the
outcome is computable, plus the geometry helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detoxops.config import PatchRepairConfig, SampDetoxConfig, ScheduleConfig
from detoxops.defenses.patch_repair import (
    CALIBRATION_FILE,
    PatchCalibration,
    PatchRepair,
    calibrate,
    calibrate_on_images,
    grow_region,
    tiling_masks,
)
from detoxops.defenses.sampdetox import SampDetox
from detoxops.diffusion import NoiseSchedule

H = 16
# explicit: the Oracle has no calibration file; no label confirmation (no classifier in these tests)
THRESHOLDS = dict(gate_threshold=0.25, pixel_threshold=0.12, confirm="none")


class Oracle:
    """eps(x_t, t) that denoises every image of the batch towards one fixed image (diffusion space)."""

    def __init__(self, target):
        self.schedule = NoiseSchedule.from_config(ScheduleConfig())
        self.target, self.device, self.dtype = target, torch.device("cpu"), torch.float32

    def __call__(self, x_t, t):
        return self.schedule.predict_eps(x_t, t, self.target.expand_as(x_t))


def _scene():
    g = torch.Generator().manual_seed(0)
    clean = (torch.rand(1, 3, H // 4, H // 4, generator=g) - 0.5).repeat_interleave(4, 2).repeat_interleave(4, 3)
    triggered = clean.clone()
    triggered[:, :, 10:13, 5:8] = 1.0  # a 3x3 white patch across two 4x4 squares of the aligned tiling
    return clean, triggered


@pytest.mark.parametrize("offsets", ["aligned", "all"])
def test_every_tiling_hides_every_pixel_once(offsets):
    masks = tiling_masks(H, 4, offsets)
    assert masks.shape == ((4 if offsets == "aligned" else 16), 1, H, H)
    per_tiling = masks.view(-1, 4, 1, H, H).sum(1)
    assert (per_tiling == 1).all()


def test_some_tiling_hides_any_3x3_patch_whole():
    masks = tiling_masks(H, 4, "all")
    for r in range(H - 2):
        for c in range(H - 2):
            assert masks[:, 0, r : r + 3, c : c + 3].flatten(1).all(1).any(), (r, c)
    aligned = tiling_masks(H, 4, "aligned")
    assert not aligned[:, 0, 10:13, 5:8].flatten(1).all(1).any()  # why `all` exists


def test_grow_region_keeps_the_component_of_the_seed():
    allowed = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    allowed[0, 0, 1:3, 1:3] = True
    allowed[0, 0, 3, 3] = True  # diagonal neighbour: 8-connected
    allowed[0, 0, 6:8, 6:8] = True  # another blob
    seed = torch.zeros_like(allowed)
    seed[0, 0, 1, 1] = True
    region = grow_region(seed, allowed)
    assert region.sum() == 5 and not region[0, 0, 6:, 6:].any()


def test_region_peak_keeps_the_peaks_component_and_flagged_takes_every_flagged_pixel():
    cmap = torch.zeros(2, 1, 8, 8)
    cmap[:, 0, 1:3, 1:3] = 0.9   # the peak's blob
    cmap[:, 0, 6:8, 6:8] = 0.5   # another flagged blob, weaker (where a trigger can sit when the peak is elsewhere)
    cmap[:, 0, 4, 0] = 0.1       # under the pixel threshold
    gated = torch.tensor([True, False])
    cfg = dict(gate_threshold=0.3, pixel_threshold=0.2, dilate=0, confirm="none")
    peak = PatchRepair(Oracle(torch.zeros(1, 3, 8, 8)), PatchRepairConfig(**cfg)).region(cmap, gated)
    flagged = PatchRepair(Oracle(torch.zeros(1, 3, 8, 8)), PatchRepairConfig(region="flagged", **cfg)).region(cmap,
                                                                                                             gated)
    assert peak[0].sum() == 4 and peak[0, 0, 1:3, 1:3].all()
    assert flagged[0].sum() == 8 and flagged[0, 0, 6:8, 6:8].all() and not flagged[0, 0, 4, 0]
    assert not peak[1].any() and not flagged[1].any()  # an image the gate let through is never repaired
    with pytest.raises(ValueError):
        PatchRepairConfig(region="all")


def test_exact_denoiser_finds_gates_and_repairs_the_patch_only():
    clean, triggered = _scene()
    repair = PatchRepair(Oracle(clean), PatchRepairConfig(stride=100, repair_stride=100, **THRESHOLDS))
    out = repair(torch.cat([clean, triggered]), torch.Generator().manual_seed(1))
    patch = torch.zeros(1, H, H, dtype=torch.bool)
    patch[0, 10:13, 5:8] = True
    # the map: zero on the clean image, peaking inside the patch of the triggered one
    assert out.context_map[0].abs().max() < 1e-4 and out.score[0] < 1e-4
    peak = out.context_map[1, 0].argmax()
    assert patch.flatten()[peak]
    assert out.gated.tolist() == [False, True]
    assert not out.region[0].any() and out.region[1][patch].all()
    assert out.region[1].sum() <= 7 * 7  # the patch grown by the box window and the dilation, not the image
    torch.testing.assert_close(out.images[0], clean[0], atol=0, rtol=0)  # not gated: bit for bit
    torch.testing.assert_close(out.images[1], clean[0], atol=1e-4, rtol=0)  # repaired to the clean content
    outside = ~out.region[1]
    assert torch.equal(out.images[1][outside.expand(3, H, H)], triggered[0][outside.expand(3, H, H)])


def test_calibration_quantiles_and_bad_input():
    maps = torch.zeros(100, 1, 4, 4)
    maps[:, 0, 0, 0] = torch.linspace(0, 1, 100)
    th = calibrate(maps, fire_rate=0.05, pixel_rate=0.01)
    assert th["gate_threshold"] == pytest.approx(0.95, abs=0.01)
    assert (maps.flatten() > th["pixel_threshold"]).float().mean() <= 0.01 + 1e-9
    with pytest.raises(ValueError, match="at least 2 clean images"):
        calibrate(maps[:1])
    with pytest.raises(ValueError, match="fire_rate"):
        calibrate(maps, fire_rate=0.0)


def test_repair_profile_runs_before_stage_one():
    clean, triggered = _scene()
    cfg = SampDetoxConfig(profile="repair", sampler="ddim",
                          patch=PatchRepairConfig(stride=100, repair_stride=100, **THRESHOLDS))
    out = SampDetox(Oracle(clean), cfg)(torch.cat([clean, triggered]) / 2 + 0.5)
    assert out.repaired.tolist() == [False, True]
    assert {"context_map", "repair_region"} <= set(out.maps)
    torch.testing.assert_close(out.images[1], out.images[0], atol=1e-3, rtol=0)
    assert SampDetoxConfig(profile="robust").resolved().patch_repair is False
    with pytest.raises(ValueError, match="t_start"):
        PatchRepair(Oracle(clean), PatchRepairConfig(t_start=5000))


def test_repaired_images_get_their_own_stage_two_level():
    clean, triggered = _scene()
    patch = PatchRepairConfig(stride=100, repair_stride=100, **THRESHOLDS)
    x01 = torch.cat([clean, triggered]) / 2 + 0.5
    out = SampDetox(Oracle(clean), SampDetoxConfig(profile="repair", sampler="ddim", t2_repaired=0, patch=patch))(x01)
    assert out.repaired.tolist() == [False, True]
    assert int(out.noise_levels[1].max()) == 0  # the repaired image skips stage 2
    base = SampDetox(Oracle(clean), SampDetoxConfig(profile="repair", sampler="ddim", patch=patch))(x01)
    assert torch.equal(out.noise_levels[0], base.noise_levels[0])  # the unrepaired one keeps t2
    with pytest.raises(ValueError, match="t2_repaired"):
        SampDetox(Oracle(clean), SampDetoxConfig(profile="repair", t2_repaired=5000, patch=patch))


def test_catalog_names_the_profiles():
    from detoxops.defenses.catalog import build_defense

    clean, _ = _scene()
    cfg = SampDetoxConfig(patch_repair=False, patch=PatchRepairConfig(**THRESHOLDS))  # an explicit field does not
    # survive a named profile
    assert build_defense("repair-ddim", Oracle(clean), cfg).patch is not None
    assert build_defense("robust", Oracle(clean), cfg).patch is None
    assert build_defense("sampdetox", Oracle(clean), cfg).patch is None


def _keys_on_the_patch(x):
    """A black box whose label is 1 when the patch pixels are white (diffusion space), else 0."""
    return (x[:, :, 10:13, 5:8].mean(dim=(1, 2, 3)) > 0.9).long()


def test_label_confirmation_keeps_only_repairs_that_change_the_label():
    clean, triggered = _scene()
    cfg = PatchRepairConfig(stride=100, repair_stride=100, confirm="label", pixel_threshold=0.12).model_copy(
        update={"gate_threshold": -1.0})  # gate every image (unvalidated: the field is >= 0 for users)
    repair = PatchRepair(Oracle(clean), cfg)
    out = repair(torch.cat([clean, triggered]), torch.Generator().manual_seed(1), _keys_on_the_patch)
    assert out.gated.tolist() == [True, True] and out.queries.tolist() == [2, 2]
    # the clean image's repair leaves its label alone: discarded, the input comes back bit for bit
    assert not out.region[0].any()
    torch.testing.assert_close(out.images[0], clean[0], atol=0, rtol=0)
    # the triggered image's repair takes the label away from the trigger: kept
    assert out.region[1].any() and _keys_on_the_patch(out.images[1:]).item() == 0
    torch.testing.assert_close(out.images[1], clean[0], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="classify"):
        repair(clean, torch.Generator().manual_seed(1))


def test_sampdetox_confirms_through_the_black_box_and_counts_its_queries():
    import numpy as np

    clean, triggered = _scene()
    patch = PatchRepairConfig(stride=100, repair_stride=100, confirm="label", pixel_threshold=0.12).model_copy(
        update={"gate_threshold": -1.0})
    cfg = SampDetoxConfig(profile="repair", sampler="ddim", patch=patch)

    def black_box(images_u8: np.ndarray) -> np.ndarray:  # what a served model receives: uint8 NHWC
        return (images_u8[:, 10:13, 5:8].mean(axis=(1, 2, 3)) > 240).astype(np.int64)

    out = SampDetox(Oracle(clean), cfg, classifier=black_box)(torch.cat([clean, triggered]) / 2 + 0.5)
    assert out.repaired.tolist() == [False, True] and out.queries.tolist() == [2, 2]
    with pytest.raises(ValueError, match="classifier"):
        SampDetox(Oracle(clean), cfg)
    from detoxops.defenses.catalog import build_defense

    assert build_defense("repair", Oracle(clean), cfg, classifier=black_box).black_box is not None


# ------------------------------------------------------------------------------- calibration files


def _maps():
    maps = torch.zeros(100, 1, 4, 4)
    maps[:, 0, 0, 0] = torch.linspace(0, 1, 100)
    return maps


def _calibration():
    return PatchCalibration.from_maps(_maps(), PatchRepairConfig(), meta={"note": "test"})


def test_calibration_gives_the_thresholds_of_any_rate_and_explicit_values_win():
    cal = _calibration()
    gate, pixel = cal.thresholds(PatchRepairConfig(fire_rate=0.05))
    assert gate == pytest.approx(calibrate(torch.linspace(0, 1, 100).view(100, 1, 1, 1), 0.05)["gate_threshold"])
    assert cal.thresholds(PatchRepairConfig(fire_rate=0.3))[0] == pytest.approx(0.7, abs=0.01)
    assert pixel == pytest.approx(calibrate(_maps(), 0.05, PatchRepairConfig().pixel_rate)["pixel_threshold"])
    assert cal.thresholds(PatchRepairConfig(gate_threshold=0.5, pixel_threshold=0.2)) == (0.5, 0.2)
    with pytest.raises(ValueError, match="pixel_rate 0.03 is not calibrated"):
        cal.thresholds(PatchRepairConfig(pixel_rate=0.03))
    with pytest.raises(ValueError, match="other context-map settings.*stride"):
        cal.thresholds(PatchRepairConfig(stride=100))


def test_calibration_file_round_trip_and_bad_files(tmp_path):
    cal = _calibration()
    path = cal.save(tmp_path / "patch_calibration.json")
    back = PatchCalibration.load(path)
    assert back == cal and not list(tmp_path.glob("*.tmp"))
    for text, match in [("{", "not a JSON"), ('{"format": "x"}', "format field"),
                        ('{"format": "detoxops-patch-calibration", "peaks": [1]}', "at least 2"),
                        ('{"format": "detoxops-patch-calibration", "peaks": [1, NaN], "pixel_thresholds": {"0.01": 1}}',
                         "finite"),
                        ('{"format": "detoxops-patch-calibration", "peaks": [1, 2], "pixel_thresholds": {"0.01": 1},'
                         ' "map_settings": {"block": -3}}', "bad calibration contents")]:
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ValueError, match=match):
            PatchCalibration.load(bad)
    with pytest.raises(FileNotFoundError, match="not found"):
        PatchCalibration.load(tmp_path / "missing.json")


def test_repair_finds_the_purifier_folders_calibration_or_names_the_fix(tmp_path):
    clean, triggered = _scene()
    oracle = Oracle(clean)
    cfg = SampDetoxConfig(profile="repair", sampler="ddim",
                          patch=PatchRepairConfig(stride=100, repair_stride=100, confirm="none"))
    with pytest.raises(ValueError, match="detoxops detox calibrate"):
        SampDetox(oracle, cfg)  # no thresholds, no calibration: refused at build time
    oracle.source_dir = tmp_path
    cal = calibrate_on_images(oracle, ((clean.repeat(4, 1, 1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1)
                              .numpy(), cfg.patch, batch_size=2)
    assert cal.meta["images"] == 4 and max(cal.peaks) < 0.01  # exact denoiser: only uint8 rounding is left
    cal.save(tmp_path / CALIBRATION_FILE)
    defense = SampDetox(oracle, cfg)
    gate, pixel = defense.patch.thresholds
    assert gate == pytest.approx(float(np.quantile(cal.peaks, 1 - cfg.patch.fire_rate)))
    assert pixel == cal.pixel_thresholds[cfg.patch.pixel_rate]
    out = defense(torch.cat([clean, triggered]) / 2 + 0.5)
    assert out.repaired.tolist() == [False, True]
    # an explicit calibration file wins over the folder's
    other = PatchCalibration(cal.map_settings, (5.0, 6.0), {cfg.patch.pixel_rate: 9.0}, {})
    other.save(tmp_path / "other.json")
    explicit = cfg.patch.model_copy(update={"calibration": str(tmp_path / "other.json")})
    assert PatchRepair(oracle, explicit).thresholds == (pytest.approx(float(np.quantile([5.0, 6.0], 1 - explicit.fire_rate))), 9.0)
    with pytest.raises(ValueError, match="uint8"):
        calibrate_on_images(oracle, np.zeros((2, H, H, 3), np.float32), cfg.patch)


@pytest.mark.parametrize("name", ["cifar10-32", "digits-16"])
def test_shipped_purifiers_carry_a_calibration_for_the_default_map(name):
    from detoxops.config import SampDetoxConfig
    from detoxops.diffusion import load_purifier
    from detoxops.diffusion.unet import shipped_purifier_dir

    purifier = load_purifier(shipped_purifier_dir(name))
    cal = PatchCalibration.load(shipped_purifier_dir(name) / CALIBRATION_FILE)
    assert cal.meta["images"] == len(cal.peaks) == 100 and cal.meta["size"] == purifier.image_size
    default = SampDetoxConfig().patch
    gate, pixel = PatchRepair(purifier, default).thresholds
    assert gate == pytest.approx(float(np.quantile(cal.peaks, 1 - default.fire_rate)))
    assert pixel == cal.pixel_thresholds[default.pixel_rate]
    # another operating point is a quantile of the same peaks: no new maps
    assert PatchRepair(purifier, PatchRepairConfig(fire_rate=0.05)).thresholds[0] > gate


def test_the_global_path_noise_does_not_depend_on_how_many_images_the_repair_gated():
    clean, triggered = _scene()
    x01 = torch.cat([clean, triggered]) / 2 + 0.5

    def constant(images_u8):  # labels never change: every repair is discarded by the confirmation
        return np.zeros(len(images_u8), dtype=np.int64)

    def run(gate: float):
        patch = PatchRepairConfig(stride=100, repair_stride=100, confirm="label", pixel_threshold=0.12).model_copy(
            update={"gate_threshold": gate})
        cfg = SampDetoxConfig(profile="repair", sampler="ddim", patch=patch)
        return SampDetox(Oracle(clean), cfg, classifier=constant)(x01, torch.Generator().manual_seed(5))

    none_gated, all_gated = run(1e9), run(-1.0)
    assert none_gated.queries.tolist() == [0, 0] and all_gated.queries.tolist() == [2, 2]
    assert torch.equal(none_gated.images, all_gated.images)  # same global-path noise, repairs discarded
