"""BDMAE (Sun et al., CVPR 2023, "Mask and Restore: Blind Backdoor Defense at Test Time with Masked
Autoencoder", arXiv 2303.15564) on detoxops's diffusion engine, the purifier's inpainting standing in for the MAE.

Read next to the paper's framework (abstract and figure "Framework of BDMAE": trigger score generation from image
structural similarity and label consistency, topology-aware refinement, restoration; its section and equation
numbers could not be read through our search tool) and its public code (github.com/tsun/BDMAE,
``defense/BDMAE.py::forward_mae``), whose steps and defaults we follow. The image is cut into a G x G token grid (G = 14, as the MAE's 224 px / 16 px patches); a token
mask is restored and the black box's hard label of the result compared with its label of the input, c = f(x).

    1. Trigger scores (paper: "image structural similarity and label consistency"). ``rp_init_out`` rounds of
       ``rp_init_in`` random masks of ``mask_ratio`` of the tokens (slices of concatenated random permutations,
       so a round covers the image):
           S_l[k] += m_j[k] · 1[f(R(x, m_j)) != c]                (label consistency, / (in · out))
           S_i    += 1 - SSIM(x, mean_j R(x, m_j) over masked pixels), pooled to tokens   (structure, / out)
    2. Topology-aware refinement (``rp_refine`` rounds for each score): take the top-n tokens (n: tokens with
       S_i >= 0.2, resp. mean(S_l) · G²), grow a connected sub-region of n/2 of them from a score-weighted random
       seed (neighbours favoured by ``topo_po``), restore it; if the label comes back to c the sub-region is the
       trigger (+0.05 there, -0.05 on the rest of the top-n), else the opposite.
    3. S = α S_i + (1 - α) S_l; adaptive restoration: for thresholds 1 - (0.6 … 0.4) (shrunk by 0.99 until at most
       25 % of the tokens pass) restore the tokens above each, average the restorations on the largest mask and
       keep the input elsewhere. The defense returns that image; the guard then asks the black box once more.

The substitution (named in docs/baselines.md): R(x, m) is not an ImageNet MAE but the purifier's inpainting:
masked pixels are noised to level ``inpaint_level`` (default T, i.e. nothing of them survives, as the MAE never
sees masked patches) and denoised with the per-pixel rule of ``denoise(t_map=...)`` while unmasked pixels stay
exactly as they are (level 0), so the network restores the masked region from the visible context, which is the
MAE's role in BDMAE. DDIM with ``inpaint_stride`` (default 100: 10 passes) keeps it CPU-sized.

Differences to the code, all for a batch-independent result: the token counts n and the threshold shrinking are
per image (the code takes batch means), masks are drawn per image, and SSIM is pooled to tokens by area average
(the code samples it with nearest interpolation). SSIM: 11-tap Gaussian window (pytorch_ssim's, as the code).

Queries per image: 1 + rp_init_in · rp_init_out + 2 · rp_refine (46 with the defaults), counted in
``BdmaeOutput.queries`` and on the defense (``queries_total``). Everything is vectorised over the batch and the
masks of a round; ``batch_size`` images at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from detoxops.config import BdmaeConfig
from detoxops.defenses.base import DefenseOutput, check_batch, make_generator
from detoxops.defenses.sancdifi import BlackBox

__all__ = ["Bdmae", "BdmaeOutput", "inpaint", "grid_adjacency", "grow_local_region", "token_to_pixels"]


@dataclass
class BdmaeOutput(DefenseOutput):
    """``images`` in [0, 1]; ``scores`` (B, G, G) final token scores; ``restored`` bool (B, 1, H, W) region
    replaced by restorations; ``queries`` int64 (B,) classifier queries spent per image."""

    scores: Tensor | None = None
    restored: Tensor | None = None
    queries: Tensor | None = None


# ------------------------------------------------------------------------------------------ helpers
def token_to_pixels(tokens: Tensor, grid: int, size: tuple[int, int]) -> Tensor:
    """(..., G*G) token mask -> (..., 1, H, W) pixel mask (nearest, as the code's F.interpolate)."""
    lead = tokens.shape[:-1]
    t = tokens.reshape(-1, 1, grid, grid).float()
    return F.interpolate(t, size=size, mode="nearest").reshape(*lead, 1, *size)


def grid_adjacency(grid: int, device: torch.device | str = "cpu") -> Tensor:
    """(G², G²) bool 4-neighbourhood of the token grid."""
    idx = torch.arange(grid * grid, device=device)
    r, c = idx // grid, idx % grid
    return ((r[:, None] - r[None]).abs() + (c[:, None] - c[None]).abs()) == 1


def grow_local_region(scores: Tensor, allowed: Tensor, length: Tensor, adjacency: Tensor, topo_po: float,
                      g: torch.Generator) -> Tensor:
    """A connected-ish region of ``length[b]`` tokens inside ``allowed[b]`` per image (the code's
    ``gen_local_sample``): a seed drawn ∝ random · score, then tokens drawn ∝ random · (score + topo_po ·
    [neighbour of the region]). float (B, G²)."""
    b, n = scores.shape
    dev = scores.device
    blocked = (~allowed).float() * 100.0
    selected = torch.zeros((b, n), device=dev)
    rows = torch.arange(b, device=dev)
    seed = (torch.rand((b, n), generator=g, device=dev) * scores - blocked).argmax(1)
    active = (length > 0).float()
    selected[rows, seed] = active
    candidate = adjacency[seed].float() * active[:, None]
    for step in range(int(length.max().item()) - 1 if len(length) else 0):
        live = (step < length - 1).float()
        pick = (torch.rand((b, n), generator=g, device=dev) * (scores + candidate * topo_po)
                - blocked - selected * 100.0).argmax(1)
        selected[rows, pick] = torch.maximum(selected[rows, pick], live)
        candidate = (candidate + adjacency[pick].float() * live[:, None]).clamp(0, 1) * (1 - selected)
    return selected


def inpaint(purifier, x: Tensor, mask: Tensor, level: int, stride: int, g: torch.Generator,
            mode: str = "replace") -> Tensor:
    """Restore the masked pixels of ``x`` (diffusion space, (N, C, H, W)) from level ``level``, the rest kept.

    ``mask`` (N, 1, H, W) bool; DDIM (η = 0) with ``stride``. ``mode``:

    * ``keep`` -- the engine's per-pixel rule, ``denoise(t_map=level on the mask, 0 elsewhere)``: unmasked pixels
      stay clean at every step while the masked ones are denoised;
    * ``replace`` -- the replacement rule of score-based inpainting (Song et al. 2021; RePaint without
      resampling): after every step the unmasked pixels are set to the input noised to the level just reached,
      with the same noise as the start, so the network always sees one noise level across the image.

    Both return the unmasked pixels exactly.
    """
    from detoxops.diffusion import denoise, step_levels

    if not bool(mask.any()):
        return x
    sched = purifier.schedule
    noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    if mode == "keep":
        levels = mask.to(torch.int64) * int(level)
        x_l = torch.where(mask, sched.q_sample(x, int(level), noise), x)
        out = denoise(purifier, x_l, int(level), mode="ddim", stride=stride, t_map=levels, generator=g)
        return torch.where(mask, out, x)
    if mode != "replace":
        raise ValueError(f"bdmae: unknown inpainting mode {mode!r}; use 'replace' or 'keep'")
    x_t = sched.q_sample(x, int(level), noise)
    visited = step_levels(int(level), "ddim", stride)
    for i, t in enumerate(visited):
        t_prev = visited[i + 1] if i + 1 < len(visited) else 0
        eps = purifier(x_t, torch.full((len(x),), t, dtype=torch.long, device=x.device)).to(x.dtype)
        x_next, _ = sched.ddim_step(x_t, t, t_prev, eps)
        x_t = torch.where(mask, x_next, sched.q_sample(x, t_prev, noise))
    return torch.where(mask, x_t, x)


# ------------------------------------------------------------------------------------------ defense
class Bdmae:
    """``Bdmae(purifier, classifier, cfg, batch_size, seed)(x01) -> BdmaeOutput``."""

    name = "bdmae"

    def __init__(self, purifier, classifier, cfg: BdmaeConfig | None = None, batch_size: int = 64,
                 seed: int = 0) -> None:
        self.purifier = purifier
        self.schedule = purifier.schedule
        self.cfg = cfg or BdmaeConfig()
        self.level = self.cfg.inpaint_level or self.schedule.T
        if self.level > self.schedule.T:
            raise ValueError(f"baselines.bdmae.inpaint_level = {self.level} exceeds the schedule's "
                             f"{self.schedule.T} steps")
        self.black_box = classifier if isinstance(classifier, BlackBox) else BlackBox(classifier)
        self.batch_size = int(batch_size)
        self.seed = int(seed)

    @property
    def queries_total(self) -> int:
        return self.black_box.queries

    def __call__(self, x01: Tensor, generator: torch.Generator | None = None) -> BdmaeOutput:
        check_batch(x01)
        device = getattr(self.purifier, "device", torch.device("cpu"))
        dtype = getattr(self.purifier, "dtype", torch.float32)
        g = generator if generator is not None else make_generator(self.seed, device)
        outs = [self._defend(chunk.to(device, dtype), g) for chunk in x01.split(self.batch_size)]
        cat = {k: torch.cat([getattr(o, k) for o in outs]) for k in ("images", "scores", "restored", "queries")}
        size = tuple(x01.shape[-2:])
        tmap = token_to_pixels(cat["scores"].flatten(1).clamp(0, 1), self.cfg.grid, size)
        maps = {"trigger_map": tmap, "noise_levels": cat["restored"].float() * self.level}
        return BdmaeOutput(maps=maps, **cat)

    # ----------------------------------------------------------------------------------- the steps
    def restore(self, x01: Tensor, tokens: Tensor, g: torch.Generator,
                query: bool = True) -> tuple[Tensor | None, Tensor, Tensor]:
        """R(x, m) for K token masks at once: ``tokens`` (K, B, G²) -> (labels (K, B) or None without ``query``,
        images (K, B, C, H, W) in [0, 1], pixel masks (K, B, 1, H, W) bool)."""
        k, b = tokens.shape[:2]
        size = tuple(x01.shape[-2:])
        pix = token_to_pixels(tokens, self.cfg.grid, size) > 0.5
        x = (x01 * 2 - 1).expand(k, *x01.shape).reshape(k * b, *x01.shape[1:])
        out = inpaint(self.purifier, x, pix.reshape(k * b, 1, *size), self.level, self.cfg.inpaint_stride, g,
                      self.cfg.inpaint_mode)
        images = ((out + 1) / 2).clamp(0, 1)
        labels = self.black_box(images).view(k, b) if query else None
        return labels, images.view(k, b, *x01.shape[1:]), pix

    def initial_scores(self, x01: Tensor, target: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """Step 1: (S_i, S_l), float (B, G²) each."""
        from detoxops.ssim import ssim_map

        c = self.cfg
        b, n = len(x01), c.grid * c.grid
        per_mask = int(n * c.mask_ratio)
        s_i = torch.zeros((b, n), device=x01.device)
        s_l = torch.zeros((b, n), device=x01.device)
        for _ in range(c.rp_init_out):
            perms = torch.rand((b, c.rp_init_in, n), generator=g, device=x01.device).argsort(-1).reshape(b, -1)
            tokens = torch.zeros((c.rp_init_in, b, n), device=x01.device)
            for j in range(c.rp_init_in):
                tokens[j].scatter_(1, perms[:, j * per_mask : (j + 1) * per_mask], 1.0)
            labels, images, pix = self.restore(x01, tokens, g)
            s_l += (tokens * (labels != target[None]).float()[..., None]).sum(0)
            weight = pix.float()
            count = weight.sum(0)
            agg = torch.where(count > 0, (weight * images).sum(0) / count.clamp_min(1), x01)
            sim = ssim_map(x01.float(), agg.float(), window=11, gaussian=True, data_range=1.0).mean(1, keepdim=True)
            s_i += 1 - F.adaptive_avg_pool2d(sim, c.grid).flatten(1)
        return s_i / c.rp_init_out, s_l / (c.rp_init_in * c.rp_init_out)

    def refine(self, x01: Tensor, target: Tensor, scores: Tensor, top_n: Tensor, g: torch.Generator) -> Tensor:
        """Step 2 for one score map: ``rp_refine`` rounds of restoring a local sub-region of the top-n tokens."""
        c = self.cfg
        adjacency = grid_adjacency(c.grid, x01.device)
        length = torch.where(top_n > 0, (top_n // 2).clamp_min(1), torch.zeros_like(top_n))
        for _ in range(c.rp_refine):
            rank = scores.argsort(1, descending=True).argsort(1)  # rank of each token, 0 = highest
            top = rank < top_n[:, None]
            local = grow_local_region(scores, top, length, adjacency, c.topo_po, g)
            rest = top.float() - local
            labels, _, _ = self.restore(x01, local[None], g)
            beta = ((labels[0] == target).float() * 2 - 1)[:, None] * c.refine_step
            scores = scores - beta * local + beta * rest
        return scores

    def final_restoration(self, x01: Tensor, scores: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """Step 3: (image (B, C, H, W) in [0, 1], restored region (B, 1, H, W) bool)."""
        c = self.cfg
        base = 1 - c.restore_init + torch.arange(c.restore_rounds, device=x01.device) * c.restore_delta  # (R,)
        shrink = 0.99 ** torch.arange(201, device=x01.device, dtype=scores.dtype)  # the code's 200 tries
        frac = (scores[:, None, :] >= (1 - base[-1] * shrink)[None, :, None]).float().mean(-1)  # (B, 201)
        ok = frac < c.max_restore_fraction
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full_like(ok[:, 0], 200, dtype=torch.long))
        thresholds = base[None] * shrink[first][:, None]  # (B, R)
        tokens = (scores[None] >= (1 - thresholds.T)[..., None]).float()  # (R, B, G²)
        _, images, pix = self.restore(x01, tokens, g, query=False)
        weight = pix.float()
        agg = (weight * images).sum(0) / weight.sum(0).clamp_min(1)
        last = pix[-1]
        return torch.where(last, agg, x01), last  # outside the largest mask: the input, exactly

    @torch.no_grad()
    def _defend(self, x01: Tensor, g: torch.Generator) -> BdmaeOutput:
        c = self.cfg
        before = self.black_box.queries
        target = self.black_box(x01)
        s_i, s_l = self.initial_scores(x01, target, g)
        n_i = (s_i >= 0.2).sum(1)
        n_l = (s_l.mean(1) * s_l.shape[1]).long()
        s_i = self.refine(x01, target, s_i, n_i, g)
        s_l = self.refine(x01, target, s_l, n_l, g)
        scores = c.alpha * s_i + (1 - c.alpha) * s_l
        images, region = self.final_restoration(x01, scores, g)
        spent = (self.black_box.queries - before) // max(len(x01), 1)
        return BdmaeOutput(images=images.float(), scores=scores.view(-1, c.grid, c.grid), restored=region,
                           queries=torch.full((len(x01),), spent, dtype=torch.int64))
