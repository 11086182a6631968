"""Patch repair: find a localised trigger by what its context cannot explain, and inpaint it (issue #20).

Why this exists. SampDetox's trigger map compares an input with its own noisy restoration (PixelSSIM after stage
1, or ``|x - restore(x, t)|``). A diffusion model restores a 3×3 white square as a bright detail: measured on
CIFAR-10 BadNets with the shipped CPU purifier, the patch survives restorations from t = 120 and t = 300, and
the difference map ranks it only moderately (pixel AUC 0.85-0.90; the top five 5×5 regions of the map cover the
whole patch in 71 % of triggered images; docs/sampdetox.md). What the model *cannot* do is invent the patch from
its surroundings. So the context map here is leave-region-out:

1. **Context map.** The image is tiled by ``block × block`` squares in a checkerboard of four phases; each phase
   is hidden in turn and inpainted from full noise (level ``t_start``) with the rest of the image as clean
   context (RePaint-style resampling, :func:`detoxops.diffusion.samplers.repaint`, DDIM with ``stride``).
   Every pixel is thus predicted once from context alone; the map is ``|x - prediction|`` (channel mean,
   ``window`` box average). A patch that straddles two squares is partly visible while the other part is
   predicted, so ``offsets: all`` repeats the tiling shifted by half a block in each direction and keeps the
   per-pixel maximum (a 3×3 patch then lies inside one square of some tiling).
2. **Gate.** An image's trigger score is its map's peak; only images whose score exceeds ``gate_threshold``
   are repaired. The threshold is calibrated on clean validation images at a chosen false-fire rate
   (:func:`calibrate`), so clean inputs are left alone.
3. **Region.** The connected set of pixels above ``pixel_threshold`` (calibrated at a clean pixel flag rate)
   that contains the peak, grown by ``dilate`` pixels.
4. **Repair.** The region is inpainted from full noise with everything else as context (RePaint again,
   ``repair_stride``); pixels outside it are returned bit for bit.
5. **Confirmation** (optional, ``confirm: label``). The repair of a gated image is kept only when the classifier,
   queried as a black box, labels the repaired image differently from the input. A trigger decides the victim's
   label, so taking it away changes the label; inpainting a small piece of a clean image rarely does. The gate can
   then fire on more images (calibrated at a higher clean rate) without changing many clean ones.

Everything is vectorised over the batch: the 4 (or 16) masked copies of a chunk run through the purifier as one
batch. Cost per image: ``4 · len(offsets) · t_start / stride`` network passes for the map, plus
``t_start / repair_stride`` for a gated image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from detoxops.config import PatchRepairConfig
from detoxops.diffusion.samplers import repaint

__all__ = ["PatchRepair", "PatchRepairOutput", "PatchCalibration", "CALIBRATION_FILE", "calibrate",
           "calibrate_on_images", "find_calibration", "tiling_masks", "grow_region", "box_mean"]

CALIBRATION_FILE = "patch_calibration.json"
"""A purifier folder's calibration of the context map (:class:`PatchCalibration`), found by the repair when
``sampdetox.patch.calibration`` is unset."""
MAP_FIELDS = ("block", "offsets", "t_start", "stride", "window")
"""The :class:`PatchRepairConfig` fields a context map depends on: a calibration holds only for these values."""
PIXEL_RATES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.07, 0.1)
"""Clean pixel flag rates whose thresholds a calibration stores (``pixel_rate`` must be one of them)."""


@dataclass
class PatchRepairOutput:
    """``images`` in the diffusion space [-1, 1]; ``context_map`` (B, 1, H, W) >= 0; ``region`` (B, 1, H, W) bool
    (empty for images not repaired); ``score`` (B,) map peaks; ``gated`` (B,) bool: above the gate (with
    ``confirm: label`` the repair is kept only where ``region`` is non-empty); ``queries`` (B,) int64 classifier
    queries spent per image."""

    images: torch.Tensor
    context_map: torch.Tensor
    region: torch.Tensor
    score: torch.Tensor
    gated: torch.Tensor
    queries: torch.Tensor | None = None


def tiling_masks(size: int, block: int, offsets: str = "all") -> torch.Tensor:
    """(M, 1, size, size) bool hidden-pixel masks: 4 checkerboard phases per tiling; every tiling covers every
    pixel exactly once. ``offsets``: ``aligned`` (one tiling), ``all`` (four, shifted by block // 2)."""
    if not 1 <= block <= size:
        raise ValueError(f"patch_repair.block {block} outside [1, {size}]")
    half = block // 2
    shifts = [(0, 0)] if offsets == "aligned" else [(0, 0), (half, half), (0, half), (half, 0)]
    ar = torch.arange(size)
    masks = []
    for sr, sc in shifts:
        for pr in (0, block):
            for pc in (0, block):
                rows = ((ar - sr - pr) % (2 * block)) < block
                cols = ((ar - sc - pc) % (2 * block)) < block
                masks.append(rows[:, None] & cols[None, :])
    return torch.stack(masks)[:, None]


def grow_region(seed: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The connected (8-neighbour) part of ``allowed`` reachable from ``seed``, both (B, 1, H, W) bool; vectorised
    flood fill by repeated 3×3 max-pooling, at most H·W steps (stops when nothing grows)."""
    region = seed & allowed
    for _ in range(seed.shape[-1] * seed.shape[-2]):
        grown = (F.max_pool2d(region.float(), 3, stride=1, padding=1) > 0) & allowed
        if torch.equal(grown, region):
            break
        region = grown
    return region


def box_mean(m: torch.Tensor, window: int) -> torch.Tensor:
    if window <= 1:
        return m
    pad = window // 2
    return F.avg_pool2d(F.pad(m, (pad, pad, pad, pad), mode="replicate"), window, stride=1)


@dataclass(frozen=True)
class PatchCalibration:
    """What the context map looks like on clean validation images, for one purifier and map setting: every image's
    peak and the pixel quantiles at :data:`PIXEL_RATES`. The thresholds at any clean fire rate follow from it
    (:meth:`thresholds`), so choosing another operating point needs no new maps. Stored as JSON
    (:meth:`save` / :meth:`load`, ``detoxops detox calibrate``)."""

    map_settings: dict
    peaks: tuple[float, ...]
    pixel_thresholds: dict[float, float]
    meta: dict

    @classmethod
    def from_maps(cls, clean_maps: torch.Tensor, cfg: PatchRepairConfig, meta: dict | None = None) -> PatchCalibration:
        """From the context maps (B, 1, H, W) of clean validation images computed with ``cfg``'s map settings."""
        if clean_maps.ndim != 4 or clean_maps.shape[0] < 2:
            raise ValueError(f"calibration needs the maps of at least 2 clean images, got {tuple(clean_maps.shape)}")
        if not bool(torch.isfinite(clean_maps).all()):
            raise ValueError("calibration: the context maps hold NaN or infinite values")
        pixels = clean_maps.flatten().double().numpy()
        return cls(map_settings=cfg.model_dump(include=set(MAP_FIELDS)),
                   peaks=tuple(float(v) for v in clean_maps.flatten(1).amax(dim=1).double().tolist()),
                   pixel_thresholds={r: float(np.quantile(pixels, 1 - r)) for r in PIXEL_RATES},
                   meta={"images": int(clean_maps.shape[0]), "size": int(clean_maps.shape[-1]), **(meta or {})})

    def thresholds(self, cfg: PatchRepairConfig) -> tuple[float, float]:
        """(gate, pixel) thresholds for ``cfg``: its explicit values, else the calibrated ones at ``fire_rate`` /
        ``pixel_rate``. Refuses a calibration made with other map settings (its numbers would not apply)."""
        ours = cfg.model_dump(include=set(MAP_FIELDS))
        if ours != self.map_settings:
            diff = {k: (self.map_settings.get(k), ours[k]) for k in MAP_FIELDS if self.map_settings.get(k) != ours[k]}
            raise ValueError("patch repair: the calibration was made with other context-map settings "
                             f"(calibrated, configured: {diff}); recalibrate with `detoxops detox calibrate`")
        gate = cfg.gate_threshold
        if gate is None:
            gate = float(np.quantile(np.asarray(self.peaks), 1 - cfg.fire_rate))
        pixel = cfg.pixel_threshold
        if pixel is None:
            match = [r for r in self.pixel_thresholds if abs(r - cfg.pixel_rate) < 1e-12]
            if not match:
                raise ValueError(f"patch repair: pixel_rate {cfg.pixel_rate} is not calibrated; choose one of "
                                 f"{sorted(self.pixel_thresholds)}, set pixel_threshold, or recalibrate with "
                                 "`detoxops detox calibrate` (a calibration made before a rate was added lacks it)")
            pixel = self.pixel_thresholds[match[0]]
        return float(gate), float(pixel)

    def to_json(self) -> dict:
        return {"format": "detoxops-patch-calibration", "version": 1, "map_settings": self.map_settings,
                "peaks": list(self.peaks), "pixel_thresholds": {str(r): v for r, v in self.pixel_thresholds.items()},
                "meta": self.meta}

    def save(self, path: str | Path) -> Path:
        """Write atomically (a temporary file renamed over ``path``): an existing calibration is never half-written."""
        import json
        import os

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PatchCalibration:
        """Read and check a calibration file (bounded JSON, no code)."""
        import json

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"patch calibration not found: {path}")
        if path.stat().st_size > 4_000_000:
            raise ValueError(f"{path}: {path.stat().st_size} bytes is too large for a patch calibration")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a JSON patch calibration ({exc})") from None
        if not isinstance(raw, dict) or raw.get("format") != "detoxops-patch-calibration":
            raise ValueError(f"{path}: not a detoxops patch calibration (format field missing)")
        peaks, pix, settings = raw.get("peaks"), raw.get("pixel_thresholds"), raw.get("map_settings")
        numbers = lambda v: isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)  # noqa: E731
        if not isinstance(peaks, list) or len(peaks) < 2 or not all(numbers(v) for v in peaks):
            raise ValueError(f"{path}: peaks must be a list of at least 2 finite numbers")
        if not isinstance(pix, dict) or not pix or not all(numbers(v) for v in pix.values()):
            raise ValueError(f"{path}: pixel_thresholds must map rates to finite numbers")
        try:
            pixel_thresholds = {float(r): float(v) for r, v in pix.items()}
            PatchRepairConfig(**settings)  # the map settings must be valid ones
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: bad calibration contents ({exc})") from None
        return cls(map_settings={k: settings[k] for k in MAP_FIELDS if k in settings}, peaks=tuple(map(float, peaks)),
                   pixel_thresholds=pixel_thresholds, meta=raw.get("meta") if isinstance(raw.get("meta"), dict) else {})


def calibrate_on_images(purifier, images_u8: np.ndarray, cfg: PatchRepairConfig, *, batch_size: int = 25,
                        seed: int = 0, progress: bool = False, meta: dict | None = None) -> PatchCalibration:
    """:class:`PatchCalibration` from clean validation images (uint8 NHWC, the purifier's size and channels):
    their context maps, ``batch_size`` images per call (each becomes 4 or 16 masked copies), batch ``i`` with
    the generator seeded ``seed * 1009 + i``."""
    from detoxops.data.tensors import to_tensor
    from detoxops.defenses.base import make_generator
    from detoxops.progress import tqdm

    images_u8 = np.asarray(images_u8)
    if images_u8.ndim != 4 or images_u8.dtype != np.uint8:
        raise ValueError(f"calibration images must be uint8 (N, H, W, C), got {images_u8.dtype} {images_u8.shape}")
    size, channels = getattr(purifier, "image_size", None), getattr(purifier, "in_channels", None)
    wrong_size = size is not None and images_u8.shape[1:3] != (size, size)
    if wrong_size or (channels is not None and images_u8.shape[3] != channels):
        raise ValueError(f"calibration images are {images_u8.shape[1]}x{images_u8.shape[2]}x{images_u8.shape[3]}, "
                         f"the purifier expects {size}x{size}x{channels}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    repair = PatchRepair(purifier, cfg)
    maps = []
    starts = range(0, len(images_u8), batch_size)
    for i, start in enumerate(tqdm(starts, desc="context maps", disable=not progress)):
        x = to_tensor(images_u8[start : start + batch_size]).to(purifier.device, purifier.dtype) * 2 - 1
        with torch.no_grad():
            maps.append(repair.context_map(x, make_generator(seed * 1009 + i, x.device)).float().cpu())
    return PatchCalibration.from_maps(torch.cat(maps), cfg, meta={"seed": seed, "batch_size": batch_size,
                                                                   **(meta or {})})


def find_calibration(purifier, cfg: PatchRepairConfig) -> PatchCalibration | None:
    """``cfg.calibration`` if set, else the purifier folder's :data:`CALIBRATION_FILE` (``None`` if it has none)."""
    if cfg.calibration is not None:
        return PatchCalibration.load(cfg.calibration)
    folder = getattr(purifier, "source_dir", None)
    if folder is not None and (Path(folder) / CALIBRATION_FILE).is_file():
        return PatchCalibration.load(Path(folder) / CALIBRATION_FILE)
    return None


class PatchRepair:
    """``PatchRepair(purifier, cfg)(x, generator, classify) -> PatchRepairOutput`` on diffusion-space batches
    ([-1, 1]); ``classify`` (diffusion-space batch -> labels, a black box) is needed with ``confirm: label``.

    The gate and pixel thresholds are ``cfg``'s when set, else calibrated ones (:class:`PatchCalibration`, from
    ``cfg.calibration`` or the purifier folder); they are resolved on first use (:attr:`thresholds`), so the
    context map alone (what a calibration computes) needs none."""

    def __init__(self, purifier, cfg: PatchRepairConfig) -> None:
        self.purifier = purifier
        self.cfg = cfg
        num_steps = int(purifier.schedule.num_train_timesteps)
        if cfg.t_start > num_steps:
            raise ValueError(f"patch_repair.t_start {cfg.t_start} exceeds the schedule's {num_steps} steps")
        self._thresholds: tuple[float, float] | None = None

    @property
    def thresholds(self) -> tuple[float, float]:
        """(gate, pixel) thresholds in use; raises a ValueError naming the fix when they are neither set nor
        calibrated for this purifier."""
        if self._thresholds is None:
            c = self.cfg
            if c.gate_threshold is not None and c.pixel_threshold is not None:
                self._thresholds = (c.gate_threshold, c.pixel_threshold)
            else:
                calibration = find_calibration(self.purifier, c)
                if calibration is None:
                    raise ValueError(
                        "patch repair needs its thresholds calibrated for this purifier: run `detoxops detox "
                        "calibrate CLEAN_IMAGES --purifier FOLDER` (writes FOLDER/patch_calibration.json), or set "
                        "sampdetox.patch.calibration, or sampdetox.patch.gate_threshold and pixel_threshold")
                self._thresholds = calibration.thresholds(c)
        return self._thresholds

    # ------------------------------------------------------------------------------------------ steps
    def context_map(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Step 1: |x - its prediction from context|, channel mean, box-averaged; max over tilings."""
        c = self.cfg
        b, _, h, w = x.shape
        if h != w:
            raise ValueError(f"patch repair expects square images, got {h}x{w}")
        masks = tiling_masks(h, c.block, c.offsets).to(x.device)  # (M, 1, H, W)
        m = masks.shape[0]
        # all masked copies of the batch at once: (M·B, C, H, W), hidden = masks repeated per image
        hidden = masks.repeat_interleave(b, dim=0)
        predicted = repaint(self.purifier, x.repeat(m, 1, 1, 1), ~hidden, c.t_start, mode="ddim",
                            stride=c.stride, generator=g)
        err = (x.repeat(m, 1, 1, 1) - predicted).abs().mean(dim=1, keepdim=True) / 2  # [0, 1] image scale
        err = torch.where(hidden, err, torch.zeros_like(err)).view(m, b, 1, h, w)
        per_tiling = err.view(m // 4, 4, b, 1, h, w).sum(dim=1)  # each tiling predicts every pixel once
        return box_mean(per_tiling.view(-1, 1, h, w), c.window).view(m // 4, b, 1, h, w).amax(dim=0)

    def region(self, cmap: torch.Tensor, gated: torch.Tensor) -> torch.Tensor:
        """Step 3: the connected flagged set around each gated image's peak (``region: flagged``: every flagged
        pixel), dilated."""
        c = self.cfg
        b = cmap.shape[0]
        flat = cmap.flatten(1)
        peak = torch.zeros_like(flat, dtype=torch.bool)
        peak[torch.arange(b), flat.argmax(dim=1)] = True
        peak = peak.view_as(cmap)
        allowed = (cmap > self.thresholds[1]) | peak
        region = grow_region(peak, allowed) if c.region == "peak" else allowed
        if c.dilate > 0:
            k = 2 * c.dilate + 1
            region = F.max_pool2d(region.float(), k, stride=1, padding=c.dilate) > 0
        return region & gated.view(-1, 1, 1, 1)

    def repair(self, x: torch.Tensor, region: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Step 4: inpaint ``region`` from full noise with the rest as context; only images with a region run."""
        todo = region.flatten(1).any(dim=1)
        if not bool(todo.any()):
            return x
        out = x.clone()
        idx = torch.nonzero(todo).squeeze(1)
        filled = repaint(self.purifier, x[idx], ~region[idx], self.cfg.t_start, mode="ddim",
                         stride=self.cfg.repair_stride, generator=g)
        out[idx] = filled
        return torch.where(region, out, x)

    def confirm(self, x: torch.Tensor, repaired: torch.Tensor, gated: torch.Tensor,
                classify: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 5: which gated images the classifier labels differently once repaired (B,) bool, and the queries
        spent per image (two per gated image: the input and its repair, sent together)."""
        changed = torch.zeros_like(gated)
        queries = torch.zeros(len(x), dtype=torch.int64, device=x.device)
        idx = torch.nonzero(gated).squeeze(1)
        if len(idx):
            labels = classify(torch.cat([x[idx], repaired[idx]])).to(x.device)
            changed[idx] = labels[: len(idx)] != labels[len(idx):]
            queries[idx] = 2
        return changed, queries

    def __call__(self, x: torch.Tensor, g: torch.Generator,
                 classify: Callable[[torch.Tensor], torch.Tensor] | None = None) -> PatchRepairOutput:
        return self.apply_map(x, self.context_map(x, g), g, classify)

    def apply_map(self, x: torch.Tensor, cmap: torch.Tensor, g: torch.Generator,
                  classify: Callable[[torch.Tensor], torch.Tensor] | None = None) -> PatchRepairOutput:
        """Steps 2-5 on a context map of ``x`` (:meth:`context_map`, the costly step)."""
        if self.cfg.confirm == "label" and classify is None:
            raise ValueError("patch repair with confirm = label queries the classifier: pass classify (a black box)")
        score = cmap.flatten(1).amax(dim=1)
        gated = score > self.thresholds[0]
        region = self.region(cmap, gated)
        images = self.repair(x, region, g)
        queries = torch.zeros(len(x), dtype=torch.int64, device=x.device)
        if self.cfg.confirm == "label":
            changed, queries = self.confirm(x, images, gated, classify)
            region = region & changed.view(-1, 1, 1, 1)
            images = torch.where(region, images, x)
        return PatchRepairOutput(images=images, context_map=cmap, region=region, score=score, gated=gated,
                                 queries=queries)


def calibrate(clean_maps: torch.Tensor, fire_rate: float = 0.05, pixel_rate: float = 0.01) -> dict[str, float]:
    """Thresholds from context maps of clean validation images (B, 1, H, W): the gate at the (1 - fire_rate)
    quantile of the images' peaks, the pixel threshold at the (1 - pixel_rate) quantile of all their pixels."""
    if clean_maps.ndim != 4 or clean_maps.shape[0] < 2:
        raise ValueError(f"calibration needs the maps of at least 2 clean images, got {tuple(clean_maps.shape)}")
    if not (0 < fire_rate < 1 and 0 < pixel_rate < 1):
        raise ValueError(f"fire_rate and pixel_rate must lie in (0, 1), got {fire_rate}, {pixel_rate}")
    peaks = clean_maps.flatten(1).amax(dim=1).double().numpy()
    pixels = clean_maps.flatten().double().numpy()
    return {"gate_threshold": float(np.quantile(peaks, 1 - fire_rate)),
            "pixel_threshold": float(np.quantile(pixels, 1 - pixel_rate))}
