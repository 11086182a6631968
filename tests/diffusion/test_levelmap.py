"""Level-map purifier: conversion from a uniform one, the map seen inside denoise, save / load, training, inpainting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from detoxops.diffusion import denoise, load_purifier, save_purifier
from detoxops.diffusion.inpaint import evaluate_inpainting, inpaint, masked_psnr, square_holes
from detoxops.diffusion.levelmap import (
    LEVEL_MAP_FILE,
    LevelMapPurifier,
    LevelMapTrainConfig,
    levelmap_from_uniform,
    random_level_maps,
    train_levelmap_purifier,
)
from detoxops.diffusion.samplers import repaint


def _perturbed(purifier: LevelMapPurifier) -> LevelMapPurifier:
    """A level-map purifier whose map channel matters (non-zero conv_in weights for it)."""
    with torch.no_grad():
        w = purifier.unet.conv_in.weight
        w[:, -1:] = torch.randn(w[:, -1:].shape, generator=torch.Generator().manual_seed(1))
    return purifier


def _x(n=3, seed=0):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


def _t_map(n=3):
    m = torch.zeros(n, 1, 8, 8, dtype=torch.long)
    m[:, :, 2:6, 1:4] = 40
    m[0, :, 0, 0] = 25
    m[1] = 13  # one image uniform
    return m


def test_zero_initialised_map_channel_reproduces_the_uniform_purifier(tiny_purifier):
    lm = levelmap_from_uniform(tiny_purifier)
    assert lm.unet.config.in_channels == 4 and lm.in_channels == 3
    assert torch.count_nonzero(lm.unet.conv_in.weight[:, 3]) == 0
    x = _x()
    t = torch.tensor([1, 300, 1000])
    assert torch.equal(lm(x, t), tiny_purifier(x, t))
    # through today's per-pixel sampler, DDPM and DDIM: bit for bit the uniform purifier's restoration
    t_map = _t_map()
    for mode, stride in (("ddpm", 1), ("ddim", 10)):
        a = denoise(tiny_purifier, x, 0, t_map=t_map, mode=mode, stride=stride,
                    generator=torch.Generator().manual_seed(3))
        b = denoise(lm, x, 0, t_map=t_map, mode=mode, stride=stride, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a, b), mode
    with pytest.raises(ValueError, match="already takes a level map"):
        levelmap_from_uniform(lm)


def test_uniform_level_map_gives_the_uniform_path(tiny_purifier):
    lm = _perturbed(levelmap_from_uniform(tiny_purifier))
    x = _x()
    for mode, stride in (("ddpm", 1), ("ddim", 10)):
        plain = denoise(lm, x, 30, mode=mode, stride=stride, generator=torch.Generator().manual_seed(2))
        mapped = denoise(lm, x, 0, t_map=torch.full((3, 1, 8, 8), 30), mode=mode, stride=stride,
                         generator=torch.Generator().manual_seed(2))
        assert torch.equal(plain, mapped), mode
    # and the map changes the output once it is not uniform (the channel is live)
    assert not torch.equal(lm(x, torch.tensor([40] * 3), level_map=_t_map()), lm(x, torch.tensor([40] * 3)))


def test_denoise_hands_a_level_map_purifier_the_current_levels(tiny_purifier):
    seen: list[torch.Tensor] = []

    class Spy(LevelMapPurifier):
        def __call__(self, x_t, levels, level_map=None):
            seen.append(level_map.clone())
            return super().__call__(x_t, levels, level_map=level_map)

    lm = levelmap_from_uniform(tiny_purifier)
    spy = Spy(lm.unet, lm.schedule)
    t_map = _t_map()
    denoise(spy, _x(), 0, t_map=t_map, mode="ddim", stride=10)
    assert len(seen) == 4  # levels 40, 30, 20, 10
    for t, m in zip((40, 30, 20, 10), seen, strict=True):
        assert torch.equal(m, t_map.clamp_max(t))


def test_level_map_purifier_chunks_like_one_pass(tiny_purifier):
    lm = _perturbed(levelmap_from_uniform(tiny_purifier))
    x, t_map = _x(5), torch.randint(0, 200, (5, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    whole = lm(x, torch.zeros(5), level_map=t_map)
    lm.cpu_chunk = 2
    assert torch.allclose(lm(x, torch.zeros(5), level_map=t_map), whole, atol=1e-6)
    with pytest.raises(ValueError, match="level_map"):
        lm(x, torch.zeros(5), level_map=t_map[:2])


def test_save_load_bit_identical(tiny_purifier, tmp_path):
    lm = _perturbed(levelmap_from_uniform(tiny_purifier))
    folder = save_purifier(lm, tmp_path / "lm")
    assert (folder / LEVEL_MAP_FILE).is_file()
    loaded = load_purifier(folder)
    assert isinstance(loaded, LevelMapPurifier)
    x, t_map = _x(), _t_map()
    assert torch.equal(loaded(x, t_map.amax((1, 2, 3)), level_map=t_map), lm(x, t_map.amax((1, 2, 3)), level_map=t_map))
    half = load_purifier(save_purifier(lm, tmp_path / "lm16", fp16=True))
    assert isinstance(half, LevelMapPurifier) and half.dtype == torch.float32
    # a uniform purifier stays uniform
    assert not isinstance(load_purifier(save_purifier(tiny_purifier, tmp_path / "u")), LevelMapPurifier)
    (folder / LEVEL_MAP_FILE).write_text(json.dumps({"kind": "level-map", "extra_channel": "t/T"}))
    with pytest.raises(ValueError, match="unknown level-map encoding"):
        load_purifier(folder)


def test_random_level_maps_cover_the_training_cases():
    g = torch.Generator().manual_seed(0)
    maps = random_level_maps(400, 32, 1000, g)
    assert maps.shape == (400, 1, 32, 32) and maps.dtype == torch.long
    assert int(maps.min()) == 0 and int(maps.max()) == 1000
    flat = maps.flatten(1)
    uniform = (flat == flat[:, :1]).all(1)
    assert 0.1 < float(uniform.float().mean()) < 0.4  # the full-image case (plus rare degenerate ones)
    with_clean_context = (flat == 0).any(1) & (flat > 0).any(1)
    assert float(with_clean_context.float().mean()) > 0.3
    inpainting = (flat == 1000).any(1) & (flat == 0).any(1)
    assert float(inpainting.float().mean()) > 0.05
    assert torch.equal(maps, random_level_maps(400, 32, 1000, torch.Generator().manual_seed(0)))


def test_training_resumes_bit_exactly(tiny_purifier, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    cfg = LevelMapTrainConfig(steps=4, batch_size=4, checkpoint_every=2)
    straight, hist = train_levelmap_purifier(images, tiny_purifier, tmp_path / "a", cfg, progress=False)
    assert hist["step"] == 4 and hist["cpu_seconds"] > 0
    assert torch.count_nonzero(straight.unet.conv_in.weight[:, 3]) > 0  # the map channel was trained
    half_cfg = cfg.model_copy(update={"steps": 2})
    train_levelmap_purifier(images, tiny_purifier, tmp_path / "b", half_cfg, progress=False)
    with pytest.raises(ValueError, match="another config"):
        train_levelmap_purifier(images, tiny_purifier, tmp_path / "b", cfg, progress=False)
    # resuming needs the same config: rewrite the recorded one as if the run had been asked for 4 steps
    state_file = tmp_path / "b" / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    state["history"]["config"]["steps"] = 4
    state_file.write_text(json.dumps(state))
    resumed, _ = train_levelmap_purifier(images, tiny_purifier, tmp_path / "b", cfg, progress=False)
    for a, b in zip(straight.unet.state_dict().values(), resumed.unet.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    saved = load_purifier(tmp_path / "a")
    x, t_map = _x(), _t_map()
    assert torch.equal(saved(x, t_map.amax((1, 2, 3)), level_map=t_map),
                       straight(x, t_map.amax((1, 2, 3)), level_map=t_map))


def test_repaint_keeps_the_context_and_counts_network_calls(tiny_purifier):
    calls = []

    def counting(x, t):
        calls.append(int(t[0]))
        return tiny_purifier(x, t)

    x0 = _x(2)
    hole = square_holes(2, 8, 3, torch.Generator().manual_seed(0))
    out = repaint(counting, x0, ~hole, 50, schedule=tiny_purifier.schedule, mode="ddim", stride=10, resample=3,
                  generator=torch.Generator().manual_seed(0))
    assert calls == [50] * 3 + [40] * 3 + [30] * 3 + [20] * 3 + [10] * 3
    assert torch.equal(out[~hole.expand_as(out)], x0[~hole.expand_as(x0)])
    assert not torch.equal(out[hole.expand_as(out)], x0[hole.expand_as(x0)])


def test_inpainting_methods_share_holes_and_noise(tiny_purifier):
    g = torch.Generator().manual_seed(0)
    holes = square_holes(6, 8, 4, g)
    assert holes.shape == (6, 1, 8, 8) and bool((holes.flatten(1).sum(1) == 16).all())
    x0, noise = _x(6), _x(6, seed=5)
    per_pixel = inpaint(tiny_purifier, x0, holes, noise, stride=250, mode="ddim")
    assert torch.equal(per_pixel[~holes.expand_as(x0)], x0[~holes.expand_as(x0)])  # context untouched
    lm = levelmap_from_uniform(tiny_purifier)
    assert torch.equal(inpaint(lm, x0, holes, noise, stride=250, mode="ddim"), per_pixel)
    # masked PSNR: a uniform error of 0.1 inside the mask, anything outside
    b = x0 + 0.1 * holes.float() + 5.0 * (~holes).float()
    assert torch.allclose(masked_psnr(b, x0, holes), torch.full((6,), 10 * np.log10(4 / 0.01)), atol=1e-3)
    images = ((x0.permute(0, 2, 3, 1) + 1) * 127.5).round().byte().numpy()
    a = evaluate_inpainting(tiny_purifier, images, (2, 4), method="repaint", stride=250)
    b2 = evaluate_inpainting(tiny_purifier, images, (2, 4), method="repaint", stride=250)
    assert a == b2 and set(a) == {2, 4} and a[4]["n"] == 6
    with pytest.raises(ValueError, match="hole side"):
        square_holes(2, 8, 9, g)


def test_cli_eval_reports_inpainting_for_both_kinds(tmp_path):
    from typer.testing import CliRunner

    from detoxops.cli import app
    from detoxops.config import UNetConfig
    from detoxops.diffusion import NoiseSchedule, Purifier, build_unet

    torch.manual_seed(0)
    uniform = Purifier(build_unet(UNetConfig(sample_size=16, block_out_channels=[8, 16])), NoiseSchedule.linear(1000))
    runner = CliRunner()
    for name, purifier, method in (("u", uniform, "repaint"), ("lm", levelmap_from_uniform(uniform), "per-pixel")):
        folder = save_purifier(purifier, tmp_path / name)
        res = runner.invoke(app, ["diffusion", "eval", str(folder), "--data", "digits", "--n", "3", "--levels", "3",
                                  "--one-shot", "--holes", "2,4", "--inpaint-method", method, "--resample", "2",
                                  "--inpaint-stride", "500", "--json", str(tmp_path / f"{name}.json")])
        assert res.exit_code == 0, res.output
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["kind"] == ("uniform" if name == "u" else "level-map")
        assert record["inpainting"]["method"] == method and set(record["inpainting"]["holes"]) == {"2", "4"}
        assert "PSNR inside the hole" in res.output
    bad = runner.invoke(app, ["diffusion", "eval", str(tmp_path / "u"), "--data", "digits", "--holes", "4",
                              "--inpaint-method", "magic"])
    assert bad.exit_code == 2 and "--inpaint-method" in bad.output


def test_shipped_levelmap_purifier_is_selectable_and_restores_real_images(cifar_archive):
    """The shipped level-map purifier: chosen by name in diffusion.purifier, never a default; on real CIFAR-10 test
    images it inpaints 4x4 holes from full noise better than the uniform purifier with the same per-pixel sampler,
    and still denoises uniformly noised images."""
    from detoxops.data.archive_sample import read_per_class
    from detoxops.diffusion import default_purifier, purifier_folder

    folder, origin = purifier_folder("cifar10-32-levelmap", 32)
    assert origin == "shipped:cifar10-32-levelmap"
    assert purifier_folder(None, 32)[1] == "shipped:cifar10-32"  # the default is unchanged
    with pytest.raises(ValueError, match="32x32"):
        purifier_folder("cifar10-32-levelmap", 16)
    lm, uniform = load_purifier(folder), default_purifier("cifar10")
    assert isinstance(lm, LevelMapPurifier)
    images = read_per_class(cifar_archive, "test", 2)[0]
    gain = (evaluate_inpainting(lm, images, (4,), stride=100)[4]["psnr_hole"]
            - evaluate_inpainting(uniform, images, (4,), stride=100)[4]["psnr_hole"])
    assert gain > 2.0, gain
    x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    x_t = lm.schedule.q_sample(x0, 120, noise)
    x0_hat = lm.schedule.predict_x0(x_t, 120, lm(x_t, torch.full((len(x0),), 120))).clamp(-1, 1)
    psnr_hat, psnr_noisy = (float(10 * torch.log10(4 / ((a - x0) ** 2).mean())) for a in (x0_hat, x_t.clamp(-1, 1)))
    assert psnr_hat > psnr_noisy + 7.0


def test_sampdetox_stage_two_runs_a_level_map_purifier_unchanged():
    """SampDetox hands its per-pixel levels to denoise; a zero-initialised level-map purifier gives exactly the
    uniform purifier's result, and a live map channel changes it."""
    from detoxops.config import SampDetoxConfig, UNetConfig
    from detoxops.defenses.sampdetox import SampDetox
    from detoxops.diffusion import NoiseSchedule, Purifier, build_unet

    torch.manual_seed(0)
    uniform = Purifier(build_unet(UNetConfig(sample_size=16, block_out_channels=[8, 16])), NoiseSchedule.linear(1000))
    x01 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cfg = SampDetoxConfig(profile="faithful", sampler="ddim")
    ref = SampDetox(uniform, cfg)(x01, generator=torch.Generator().manual_seed(1))
    same = SampDetox(levelmap_from_uniform(uniform), cfg)(x01, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ref.images, same.images)
    live = SampDetox(_perturbed(levelmap_from_uniform(uniform)), cfg)(x01, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(live.images, ref.images)
