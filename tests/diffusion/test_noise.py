"""detoxops.diffusion.noise: per-sample noise streams (KeyedNoise) and the samplers' dispatch (draw_noise)."""

import pytest
import torch

from detoxops.config import ScheduleConfig, UNetConfig
from detoxops.diffusion import NoiseSchedule, Purifier, build_unet, denoise
from detoxops.diffusion.noise import KeyedNoise, draw_noise


def test_keyed_noise_is_per_sample_and_batch_independent():
    together = KeyedNoise([5, 7, 9]).randn((3, 2, 4, 4))
    alone = KeyedNoise([7]).randn((1, 2, 4, 4))
    assert torch.equal(together[1], alone[0])
    assert not torch.equal(together[0], together[2])
    again = KeyedNoise([5, 7, 9])
    first, second = again.randn((3, 2, 4, 4)), again.randn((3, 2, 4, 4))
    assert torch.equal(first, together) and not torch.equal(first, second)  # a stream, not a constant
    with pytest.raises(ValueError, match="holds 3 keys"):
        again.randn((2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"\[0, 2\*\*63\)"):
        KeyedNoise([-1])
    # the samplers take it wherever they take a generator: a sample's DDPM result does not depend on its batch
    torch.manual_seed(0)
    unet = build_unet(UNetConfig(sample_size=8, block_out_channels=[8, 16]))
    purifier = Purifier(unet, NoiseSchedule.from_config(ScheduleConfig()))
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    batch = denoise(purifier, x, 4, generator=KeyedNoise([1, 2, 3]))
    single = denoise(purifier, x[1:2], 4, generator=KeyedNoise([2]))
    assert torch.allclose(batch[1:2], single, atol=1e-5)


def test_draw_noise_takes_a_generator_or_keyed_noise():
    a = draw_noise((2, 3), torch.Generator().manual_seed(1), "cpu", torch.float32)
    assert torch.equal(a, torch.randn((2, 3), generator=torch.Generator().manual_seed(1)))
    b = draw_noise((2, 3), KeyedNoise([4, 5]), "cpu", torch.float64)
    assert b.dtype == torch.float64 and torch.equal(b.float(), KeyedNoise([4, 5]).randn((2, 3)))
