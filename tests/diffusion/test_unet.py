"""build_unet / save_purifier / load_purifier / default_purifier."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from detoxops.config import UNetConfig
from detoxops.diffusion import (
    NoiseSchedule,
    Purifier,
    build_unet,
    count_params,
    default_purifier,
    load_purifier,
    save_purifier,
)


def test_default_and_ddpm_cifar10_sizes():
    assert count_params(build_unet(UNetConfig(sample_size=32))) == 1_063_651  # the reference's 1.06M purifier
    assert count_params(build_unet(UNetConfig(sample_size=32, preset="ddpm-cifar10"))) == 35_746_307  # Ho et al.
    # the default size is the training data's: a network cannot be built before the data says it
    with pytest.raises(ValueError, match="sample_size is 'auto': give the image side"):
        build_unet(UNetConfig())


def test_build_rejects_indivisible_size():
    with pytest.raises(ValueError, match="sample_size"):
        build_unet(UNetConfig(sample_size=10, block_out_channels=[8, 16, 16]))


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 8, 8, generator=g), torch.tensor([5, 300])


def test_save_load_bit_identical_and_schedule_roundtrip(tiny_purifier, tmp_path):
    tiny_purifier.schedule = NoiseSchedule.cosine(1000)
    folder = save_purifier(tiny_purifier, tmp_path / "p")
    assert sorted(f.name for f in folder.iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"
    ]
    loaded = load_purifier(folder)
    x, t = _inputs()
    assert torch.equal(loaded(x, t), tiny_purifier(x, t))
    assert torch.equal(loaded.schedule.betas, tiny_purifier.schedule.betas)
    assert loaded.dtype == torch.float32


def test_resave_keeps_other_files(tiny_purifier, tmp_path):
    folder = save_purifier(tiny_purifier, tmp_path / "p")
    (folder / "checkpoint").mkdir()
    (folder / "README.txt").write_text("x")
    save_purifier(tiny_purifier, folder)
    assert (folder / "checkpoint").is_dir() and (folder / "README.txt").is_file()


def test_save_cleans_a_killed_saves_temp_folder(tiny_purifier, tmp_path):
    from detoxops.data.imageset import temp_path_for

    live = temp_path_for(tmp_path / "p")  # this process's name: host + our pid
    killed = live.with_name(live.name.replace(f"-{__import__('os').getpid()}-", "-999999999-"))
    killed.mkdir()
    (killed / "diffusion_pytorch_model.safetensors").write_bytes(b"half")
    save_purifier(tiny_purifier, tmp_path / "p")
    assert not killed.exists()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["p"]


def test_fp16_save_upcasts_on_load(tiny_purifier, tmp_path):
    folder = save_purifier(tiny_purifier, tmp_path / "p16", fp16=True)
    loaded = load_purifier(folder)
    assert loaded.dtype == torch.float32
    x, t = _inputs()
    torch.testing.assert_close(loaded(x, t), tiny_purifier(x, t), rtol=0, atol=5e-2)
    assert tiny_purifier.dtype == torch.float32  # saving fp16 must not convert the caller's network


def test_loads_a_plain_diffusers_folder(tmp_path, tiny_cfg):
    """A folder written by diffusers itself (DDPMPipeline layout: unet/ + scheduler/)."""
    unet = build_unet(tiny_cfg)
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    DDPMScheduler(num_train_timesteps=500, beta_schedule="linear", beta_end=0.03).save_config(
        tmp_path / "pipe" / "scheduler")
    p = load_purifier(tmp_path / "pipe")
    assert p.schedule.T == 500
    assert torch.allclose(p.schedule.betas, torch.linspace(1e-4, 0.03, 500, dtype=torch.float64))


def test_refuses_pickled_weights_and_missing_paths(tmp_path, tiny_cfg, monkeypatch):
    unet = build_unet(tiny_cfg)
    unet.save_pretrained(tmp_path / "bin", safe_serialization=False)
    with pytest.raises(ValueError, match="safetensors"):
        load_purifier(tmp_path / "bin")
    with pytest.raises(FileNotFoundError):
        load_purifier(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_purifier(tmp_path / "empty")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        load_purifier("google/ddpm-cifar10-32")


def test_purifier_passes_level_minus_one_to_diffusers(tiny_purifier):
    x, t = _inputs()
    with torch.no_grad():
        direct = tiny_purifier.unet(x, t - 1).sample
    assert torch.equal(tiny_purifier(x, t), direct)


def test_cpu_chunking_gives_the_whole_batch_result(tiny_purifier):
    """Off CUDA the UNet runs in chunks of ``cpu_chunk`` images: same ε̂ as one pass, per-sample or shared level."""
    torch.manual_seed(0)
    size, ch = tiny_purifier.image_size, tiny_purifier.in_channels
    x = torch.randn(37, ch, size, size)
    levels = torch.randint(1, 300, (37,))
    tiny_purifier.cpu_chunk = None
    whole, whole_scalar = tiny_purifier(x, levels), tiny_purifier(x, torch.tensor(40))
    tiny_purifier.cpu_chunk = 8
    try:
        torch.testing.assert_close(tiny_purifier(x, levels), whole, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tiny_purifier(x, torch.tensor(40)), whole_scalar, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(whole[:8], tiny_purifier(x[:8], levels[:8].flip(0)))  # levels stay paired
    finally:
        tiny_purifier.cpu_chunk = 64
    with pytest.raises(ValueError, match="cpu_chunk"):
        Purifier(tiny_purifier.unet, tiny_purifier.schedule, cpu_chunk=0)


def test_inference_precision_rule_and_bf16_forward(tiny_purifier, tmp_path, monkeypatch):
    """``diffusion.precision``: ``auto`` keeps CPUs in fp32 (the docs' numbers), ``native`` follows the CPU's bf16
    support, ``bf16`` / ``fp32`` as asked; a bf16 pass differs from fp32 only by bf16 rounding, returns fp32 and keeps
    the weights fp32; the precision travels from load_purifier / load_chosen_purifier; an unknown name fails early."""
    from detoxops.config import DiffusionConfig
    from detoxops.devices import bf16_inference
    from detoxops.operations import load_chosen_purifier

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not bf16_inference("auto", cpu) and bf16_inference("auto", cuda)
    assert bf16_inference("bf16", cpu) and not bf16_inference("fp32", cuda) and bf16_inference("native", cuda)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert not bf16_inference("native", cpu)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert bf16_inference("native", cpu)
    with pytest.raises(ValueError, match="diffusion.precision must be one of"):
        Purifier(tiny_purifier.unet, tiny_purifier.schedule, precision="fp16")

    x, t = _inputs()
    fp32 = tiny_purifier(x, t)
    bf16 = Purifier(tiny_purifier.unet, tiny_purifier.schedule, precision="bf16")(x, t)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max()
    assert all(p.dtype == torch.float32 for p in tiny_purifier.unet.parameters())

    save_purifier(tiny_purifier, tmp_path / "p")
    assert load_purifier(tmp_path / "p", precision="bf16").precision == "bf16"
    chosen = load_chosen_purifier(tmp_path / "p", DiffusionConfig(precision="native"), tiny_purifier.image_size)
    assert chosen.precision == "native" and load_purifier(tmp_path / "p").precision == "auto"


def test_purifier_folder_rule(tmp_path):
    """configured folder → shipped for the image size → none (the caller trains one)."""
    from detoxops.diffusion import purifier_folder

    (tmp_path / "mine").mkdir()
    assert purifier_folder(tmp_path / "mine", 16) == ((tmp_path / "mine").resolve(), "configured")
    folder, origin = purifier_folder(None, 16)
    assert origin == "shipped:digits-16" and (folder / "config.json").is_file()
    assert purifier_folder(None, 32)[1] == "shipped:cifar10-32"
    assert purifier_folder(None, 64) == (None, "none")
    with pytest.raises(FileNotFoundError, match="diffusion.purifier"):
        purifier_folder(tmp_path / "missing", 16)


def test_default_purifier_errors_and_shipped(monkeypatch):
    with pytest.raises(ValueError, match="no shipped purifier for dataset"):
        default_purifier("imagenet")
    with pytest.raises(FileNotFoundError, match="7x7"):
        default_purifier(7)


def test_default_purifier_shipped_digits():
    from detoxops.diffusion.unet import shipped_purifier_dir

    if not (shipped_purifier_dir("digits-16") / "config.json").is_file():
        pytest.skip("digits-16 purifier not shipped in this checkout")
    p = default_purifier("digits")
    assert isinstance(p, Purifier) and p.image_size == 16 and p.dtype == torch.float32
    cfg = json.loads((shipped_purifier_dir("digits-16") / "config.json").read_text())
    assert cfg["sample_size"] == 16
    assert isinstance(p.unet, UNet2DModel)


def test_shipped_cifar10_purifier_denoises_real_images(cifar_archive):
    """The shipped CIFAR-10 purifier must beat the noisy input by a wide margin at the levels the defenses use."""
    from detoxops.data.archive_sample import read_per_class
    from detoxops.diffusion.unet import shipped_purifier_dir

    cifar_test_images = read_per_class(cifar_archive, "test", 4)[0]

    assert (shipped_purifier_dir("cifar10-32") / "config.json").is_file()
    p = default_purifier("cifar10")
    assert p.image_size == 32
    x0 = torch.from_numpy(cifar_test_images[:32]).permute(0, 3, 1, 2).float() / 127.5 - 1
    sched = p.schedule
    g = torch.Generator().manual_seed(0)
    for t, min_gain_db in ((20, 4.0), (120, 7.0)):
        noise = torch.randn(x0.shape, generator=g)
        x_t = sched.q_sample(x0, t, noise)
        with torch.no_grad():
            x0_hat = sched.predict_x0(x_t, t, p(x_t, torch.full((len(x0),), t))).clamp(-1, 1)

        def psnr(a):
            return float(10 * torch.log10(4 / ((a - x0) ** 2).mean()))

        assert psnr(x0_hat) > psnr(x_t.clamp(-1, 1)) + min_gain_db, t


def test_the_trained_on_cifar10_purifier_loads_by_name_and_denoises_better_than_the_default(cifar_archive):
    """cifar10-32-v2 (cifar10-32 trained on, optional) loads by name and denoises the same noisy real images better
    than the default at t = 120 and 300 (measured on 256 images: +1.01 / +1.26 dB one-shot, docs/diffusion.md)."""
    from detoxops.data.archive_sample import read_per_class
    from detoxops.diffusion import purifier_folder
    from detoxops.diffusion.unet import load_purifier

    folder, origin = purifier_folder("cifar10-32-v2", 32)
    assert origin == "shipped:cifar10-32-v2" and folder != purifier_folder(None, 32)[0]
    with pytest.raises(ValueError, match="32x32"):
        purifier_folder("cifar10-32-v2", 16)
    default, trained_on = default_purifier("cifar10"), load_purifier(folder)
    x0 = torch.from_numpy(read_per_class(cifar_archive, "test", 4)[0][:32]).permute(0, 3, 1, 2).float() / 127.5 - 1
    g = torch.Generator().manual_seed(0)
    for t in (120, 300):
        x_t = default.schedule.q_sample(x0, t, torch.randn(x0.shape, generator=g))
        tt = torch.full((len(x0),), t)
        with torch.no_grad():
            errors = [float(((p.schedule.predict_x0(x_t, t, p(x_t, tt)).clamp(-1, 1) - x0) ** 2).mean())
                      for p in (default, trained_on)]
        assert errors[1] < errors[0], (t, errors)
