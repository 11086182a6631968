"""SampDetox (Yang et al., NeurIPS 2024): two-stage, diffusion-based detoxification of test-time samples.

Read next to the paper's Algorithm 1 (section 4.5); the line numbers below are the algorithm's.

    Stage 1, global (lines 1-6):   x_t1 = sqrt(abar_t1) x0 + sqrt(1 - abar_t1) z;  x̂0 = denoise(x_t1 from t1)
    Trigger map (line 7):          M = PixelSSIM(x0, x̂0), turned into a trigger likelihood in [0, 1]
    Per-pixel levels (lines 8-9):  m[i] = t2 * M[i]
    Stage-2 noise (line 10):       x_m[i] = sqrt(abar_m[i]) x̂0[i] + sqrt(1 - abar_m[i]) z[i]
    Stage 2, local (lines 12-21):  denoise from max(m) down; pixel i is only updated once the step is below m[i]
    Output (line 22):              the stage-2 result

Everything runs on the whole batch at once; the per-pixel rule of lines 15-19 is the ``t_map`` argument of
:func:`detoxops.diffusion.denoise`. The paper writes ``m[i] = t2 * M[i]`` with M the SSIM map itself, which
would noise the *best*-restored pixels most; like the public code we use the trigger likelihood derived from
SSIM (low SSIM = likely trigger). Which likelihood (min-max per image, as the public code, or (1 - SSIM)/2)
is ``map_norm``.

Beyond the paper (issue #10, ``SampDetoxConfig``): the localiser is pluggable (``localisers``), stage 2 can
use a binary mask restored from a high level ``t_mask`` instead of soft levels, and it can start from the
original input instead of the stage-1 output. Issue #20 adds an optional *patch repair* before line 1
(``patch_repair``, :mod:`detoxops.defenses.patch_repair`): a localised trigger found by what its context cannot
explain is inpainted away, gated per image, and the algorithm then runs on the repaired input.
``profile: faithful`` is the paper; the ``robust`` and ``repair`` profiles and why they differ are in
docs/sampdetox.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detoxops.config import SampDetoxConfig
from detoxops.defenses.base import BlackBox, DefenseOutput, check_batch, make_generator
from detoxops.defenses.localisers import build_localiser
from detoxops.defenses.patch_repair import PatchRepair, PatchRepairOutput

__all__ = ["SampDetox", "SampDetoxOutput", "noise_levels_from_map"]


@dataclass
class SampDetoxOutput(DefenseOutput):
    """``images`` in [0, 1]; ``trigger_map`` (B, 1, H, W) in [0, 1]; ``noise_levels`` (B, 1, H, W) int64 stage-2
    level per pixel; ``stage1`` the stage-1 restoration in [0, 1]; ``repaired`` (B,) bool: the patch repair
    changed the image (all False when it is off); ``queries`` (B,) int64: classifier queries spent per image (the
    patch repair's label confirmation; 0 otherwise)."""

    trigger_map: torch.Tensor | None = None
    noise_levels: torch.Tensor | None = None
    stage1: torch.Tensor | None = None
    repaired: torch.Tensor | None = None
    queries: torch.Tensor | None = None


def noise_levels_from_map(trigger_map: torch.Tensor, cfg: SampDetoxConfig,
                          repaired: torch.Tensor | None = None) -> torch.Tensor:
    """Stage-2 level of every pixel (lines 8-9), int64 (B, 1, H, W).

    soft: ``round(t2 * map)`` (the paper), with ``t2_repaired`` in place of ``t2`` for the images ``repaired``
    (B,) bool marks; mask: ``t_mask`` where ``map > mask_threshold``, else 0.
    """
    c = cfg.resolved()
    if c.stage2 == "soft":
        if repaired is None or c.t2_repaired is None:
            return torch.round(c.t2 * trigger_map).to(torch.int64)
        # per-image t2 in fp32: a half-precision map must not round the levels themselves (257 is not a bf16)
        t2 = torch.where(repaired.to(trigger_map.device), float(c.t2_repaired), float(c.t2))
        return torch.round(t2.view(-1, 1, 1, 1) * trigger_map.float()).to(torch.int64)
    return torch.where(trigger_map > c.mask_threshold, c.t_mask, 0).to(torch.int64)


class SampDetox:
    """``SampDetox(purifier, cfg)(x01) -> SampDetoxOutput``; ``purifier`` is a :class:`detoxops.diffusion.Purifier`.
    ``classifier`` (a black box: module, callable on uint8 batches or URL) only for the patch repair's label
    confirmation (``sampdetox.patch.confirm: label``); SampDetox itself never queries the model."""

    def __init__(self, purifier, cfg: SampDetoxConfig | None = None, classifier=None) -> None:
        self.purifier = purifier
        self.schedule = purifier.schedule
        self.cfg = (cfg or SampDetoxConfig()).resolved()
        c = self.cfg
        num_steps = int(self.schedule.num_train_timesteps)
        for key in ("t1", "t2", "t2_repaired", "t_loc", "t_mask"):
            if (getattr(c, key) or 0) > num_steps:
                raise ValueError(
                    f"sampdetox.{key} = {getattr(c, key)} exceeds the schedule's {num_steps} steps"
                )
        self.localiser = build_localiser(c)
        self.patch = PatchRepair(purifier, c.patch) if c.patch_repair else None
        if self.patch is not None:
            self.patch.thresholds  # noqa: B018  (fail at build time, with the fix, if they are not calibrated)
        confirming = self.patch is not None and c.patch.confirm == "label"
        self.black_box = BlackBox(classifier) if confirming else None  # refuses a missing classifier
        self.name = f"sampdetox[{c.profile}/{c.sampler}]"

    # ------------------------------------------------------------------------------------------ public
    def __call__(self, x01: torch.Tensor, generator: torch.Generator | None = None) -> SampDetoxOutput:
        check_batch(x01)
        device, dtype = self._placement(x01)
        g = generator if generator is not None else make_generator(self.cfg.seed, device)
        outputs = [self._detox(chunk.to(device, dtype), g) for chunk in x01.split(self.cfg.batch_size)]
        if len(outputs) == 1:
            return outputs[0]
        return _concat(outputs)

    def _placement(self, x01: torch.Tensor) -> tuple[torch.device, torch.dtype]:
        """Where and in which precision the batch is processed: the purifier's."""
        return self.purifier.device, self.purifier.dtype

    # ----------------------------------------------------------------------------------- the algorithm
    def _detox(self, x01: torch.Tensor, g: torch.Generator) -> SampDetoxOutput:
        c = self.cfg
        x0 = x01 * 2 - 1  # diffusion space [-1, 1]

        # before line 1 (issue #20, optional): inpaint a localised trigger away, on gated images only
        classify = None if self.black_box is None else (lambda x: self.black_box(_to01(x)))
        repair = None
        if self.patch is not None:
            # the repair draws from a stream of its own (seeded by one draw of g), so the global path below sees the
            # same noise whether the repair gated no image or all of them: two settings of the gate then differ
            # only in what the repair did, not in the global path's noise
            seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device))
            repair = self.patch(x0, make_generator(seed, g.device), classify)
        if repair is not None:
            x0 = repair.images

        # lines 1-6: global detoxification, noise everything to t1 and denoise
        stage1 = self.restore(x0, c.t1, g)

        # line 7: trigger likelihood per pixel (PixelSSIM in the paper; see localisers)
        trigger_map = self.localiser(x0, stage1, lambda x, t: self.restore(x, t, g))

        # lines 8-9: per-pixel noise levels
        repaired = _repaired(repair, x0.shape[0], x0.device)
        levels = noise_levels_from_map(trigger_map, c, repaired)

        # lines 10-21: per-pixel noising and masked denoising, from the stage-1 output (paper) or the input
        base = stage1 if c.stage2_base == "stage1" else x0
        detoxed = self.local_detox(base, levels, g)

        # line 22
        maps = {"trigger_map": trigger_map, "noise_levels": levels.to(torch.float32)}
        if repair is not None:
            maps |= {"context_map": repair.context_map, "repair_region": repair.region.to(torch.float32)}
        return SampDetoxOutput(
            images=_to01(detoxed),
            maps=maps,
            trigger_map=trigger_map,
            noise_levels=levels,
            stage1=_to01(stage1),
            repaired=repaired,
            queries=(repair.queries if repair is not None and repair.queries is not None
                     else torch.zeros(x0.shape[0], dtype=torch.int64, device=x0.device)),
        )

    def restore(self, x: torch.Tensor, t: int, g: torch.Generator) -> torch.Tensor:
        """Noise ``x`` (diffusion space) to level ``t`` (equation 2) and denoise it back (DDPM / DDIM)."""
        if t <= 0:
            return x
        from detoxops.diffusion import denoise

        x_t = self.schedule.q_sample(x, int(t), self._noise_like(x, g))
        return denoise(self.purifier, x_t, int(t), mode=self.cfg.sampler, stride=self._stride(),
                       eta=self.cfg.ddim_eta, generator=g)

    def local_detox(self, base: torch.Tensor, levels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Lines 10-21: noise pixel i to level m[i], denoise updating pixel i only below m[i].

        Pixels at level 0 are returned exactly as ``base``.
        """
        from detoxops.diffusion import denoise, snap_levels

        t_max = int(levels.max()) if levels.numel() else 0
        if t_max <= 0:
            return base
        if self.cfg.sampler == "ddim":
            # strided sampling: put every level on the DDIM grid before noising, so the noise added and the
            # step that removes it agree (see detoxops.diffusion.snap_levels)
            levels = snap_levels(levels, t_max, self._stride())
        x_m = self.noise_per_pixel(base, levels, g)
        out = denoise(
            self.purifier, x_m, t_max, mode=self.cfg.sampler, stride=self._stride(), t_map=levels,
            eta=self.cfg.ddim_eta, generator=g,
        )
        return torch.where(levels > 0, out, base)

    def noise_per_pixel(self, base: torch.Tensor, levels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Line 10: x_m[i] = sqrt(abar_m[i]) base[i] + sqrt(1 - abar_m[i]) z[i]; level-0 pixels unchanged."""
        noised = self.schedule.q_sample(base, levels, self._noise_like(base, g))
        return torch.where(levels > 0, noised, base)

    # ---------------------------------------------------------------------------------------- helpers
    def _stride(self) -> int:
        return self.cfg.ddim_stride if self.cfg.sampler == "ddim" else 1

    @staticmethod
    def _noise_like(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def _repaired(repair: PatchRepairOutput | None, batch: int, device) -> torch.Tensor:
    if repair is None:
        return torch.zeros(batch, dtype=torch.bool, device=device)
    return repair.region.flatten(1).any(dim=1)


def _to01(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0.0, 1.0).to(torch.float32)


def _concat(outputs: list[SampDetoxOutput]) -> SampDetoxOutput:
    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(o, name) for o in outputs])

    maps = {k: torch.cat([o.maps[k] for o in outputs]) for k in outputs[0].maps}
    return SampDetoxOutput(
        images=cat("images"),
        maps=maps,
        trigger_map=cat("trigger_map"),
        noise_levels=cat("noise_levels"),
        stage1=cat("stage1"),
        repaired=cat("repaired"),
        queries=cat("queries"),
    )
