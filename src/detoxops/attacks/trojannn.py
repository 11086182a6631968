"""TrojanNN (Liu et al. 2018) as in BackdoorBench ``attack/trojannn.py`` (spec §2.7).

The trigger is an apple-shaped colour pattern optimised on a **clean surrogate** (``fit(..., model=)``) to drive
selected neurons of one layer to a high value, then added to the images **modulo 256** (BackdoorBench casts
``trigger + x`` to uint8 before clipping, so sums above 255 wrap: 430 → 174); pixels outside the mask are
unchanged. Dirty-label, ratio 0.1, target 0, as BackdoorBench.

:meth:`TrojanNN.fit`:

1. **Neurons**: ``num_neurons`` = 2 inputs of layer ``layer`` (BackdoorBench: PreAct-ResNet18's ``linear``;
   detoxops classifiers: ``head``), i.e. entries of the penultimate feature. BackdoorBench ranks them by the column
   sums of |W| of a 1000-class head that is never loaded, so its choice is effectively a seeded random draw:
   ``neuron_selection: random`` (default) draws them with the attack seed; ``weight`` ranks the surrogate's own
   |W| column sums (the original TrojanNN intent); ``neurons`` names them explicitly.
2. **Mask**: BackdoorBench's ``apple4.png`` (white Apple logo on black, 224 px) is not redistributable here, so a
   procedural apple silhouette of the same placement and size is drawn (:func:`apple_mask_image`: about 10 % of
   the pixels, rows ≈ 16–29, cols ≈ 18–28 at 32 px), bilinear-resized to the image size like torchvision
   ``Resize``; ``mask_path`` takes any white-on-black image instead. The mask region is where it is non-zero.
3. **Optimisation**: starting from the resized mask image m (float [0, 1]), minimise
   Σ_k (a_k(x·[m > 0]) − ``target_value``)² with a_k the selected inputs of ``layer`` (summed over space for a
   convolutional layer), by signed-gradient steps of ``step_size`` 0.1, projected to the L∞ ball of ``eps`` 0.3
   around m and to [0, 1], for ``iters`` = 1000 steps or until the cost is below ``tolerance`` 1e-3. Pixels
   outside the mask get no gradient and stay 0. BackdoorBench feeds this input to its network *without* the
   dataset normalisation the network was trained with; ``raw_input: true`` (default) reproduces that for
   detoxops classifiers (which normalise inside) by feeding x·std + mean, so the backbone sees raw x.
4. The trigger is the result ×255 truncated to uint8 (torchvision ``ToPILImage``).

Cost: ``iters`` forward + backward passes on one image — seconds on a CPU (docs/attacks.md). ``trigger_path``
takes a ready trigger (.npy uint8 S×S×3 as :meth:`save_state` writes, or an image file such as BackdoorBench's
``trojannn_trigger.png``) and skips fitting. Deterministic given the seed (no random step besides the seeded
neuron draw).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from tqdm.auto import tqdm

from detoxops.attacks.base import Attack, AttackOptions, truncate_to_uint8
from detoxops.attacks.registry import register
from detoxops.attacks.substitutes import load_image_file

TRIGGER_FILE = "trojannn_trigger.npy"


class TrojanNNOptions(AttackOptions):
    mask_path: str | None = None
    """White-on-black mask image (BackdoorBench: ``apple4.png``); ``None`` = the procedural apple substitute."""
    layer: str = "head"
    """Module whose *input* holds the neurons (BackdoorBench ``selected_layer_name: linear``)."""
    num_neurons: int = Field(default=2, ge=1)
    neuron_selection: Literal["random", "weight"] = "random"
    """``random``: seeded draw (what BackdoorBench effectively does); ``weight``: top |W| column sums."""
    neurons: list[int] | None = None
    """Explicit neuron indices (override ``num_neurons`` / ``neuron_selection``)."""
    target_value: float = 100.0
    """``neuron_target_values``."""
    iters: int = Field(default=1000, ge=1)
    """``mask_update_iters``."""
    step_size: float = Field(default=0.1, gt=0.0)
    eps: float = Field(default=0.3, gt=0.0, le=1.0)
    tolerance: float = Field(default=1e-3, ge=0.0)
    raw_input: bool = True
    """Feed the backbone un-normalised [0, 1] input, as BackdoorBench (see the module docstring)."""
    trigger_path: str | None = None
    """A ready trigger (.npy uint8 S×S×3, or an image file); skips fitting."""


def _draw_apple(side: int = 224) -> np.ndarray:
    """A white apple silhouette (two lobes, a bite on the right, a leaf) on black, placed like ``apple4.png``."""
    from PIL import Image, ImageDraw

    u, k, cx, cy, dy = side / 224.0, 0.88, 162.0, 160.0, 7.0

    def pts(*xy: float) -> list[tuple[float, float]]:  # shrink about (cx, cy), shift down, scale to side
        return [((cx + (x - cx) * k) * u, (cy + (y - cy) * k + dy) * u) for x, y in zip(xy[::2], xy[1::2], strict=True)]

    img = Image.new("L", (side, side), 0)
    d = ImageDraw.Draw(img)
    d.ellipse(pts(126, 132, 168, 196), fill=255)  # left lobe
    d.ellipse(pts(154, 132, 196, 196), fill=255)  # right lobe
    d.ellipse(pts(132, 150, 190, 204), fill=255)  # lower body
    d.ellipse(pts(154, 126, 168, 140), fill=0)  # stem notch
    d.ellipse(pts(184, 144, 214, 176), fill=0)  # bite
    d.polygon(pts(160, 128, 164, 114, 176, 104, 174, 118), fill=255)  # leaf
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


@lru_cache(maxsize=8)
def apple_mask_image(size: int) -> np.ndarray:
    """The apple substitute for BackdoorBench's ``apple4.png`` at ``size``×``size`` (uint8 RGB, read-only)."""
    from PIL import Image

    img = Image.fromarray(_draw_apple()).resize((size, size), Image.BILINEAR)
    out = np.asarray(img, dtype=np.uint8).copy()
    out.setflags(write=False)
    return out


@register
class TrojanNN(Attack):
    name: ClassVar[str] = "trojannn"
    needs_fit: ClassVar[bool] = True
    needs_model: ClassVar[bool] = True
    Options: ClassVar[type[AttackOptions]] = TrojanNNOptions
    options: TrojanNNOptions

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        o = self.options
        if o.neurons is not None and (len(o.neurons) == 0 or min(o.neurons) < 0 or len(set(o.neurons)) != len(o.neurons)):
            raise ValueError(f"options.trojannn.neurons must be distinct non-negative indices, got {o.neurons}")
        if o.mask_path is not None:
            self.mask_image = load_image_file(o.mask_path, self.image_size, resample="bilinear")
        else:
            self.mask_image = apple_mask_image(self.image_size)
        self.region = np.any(self.mask_image > 0, axis=-1)  # (S, S) bool
        if not self.region.any():
            raise ValueError(f"trojannn mask {o.mask_path or 'apple'}: no non-zero pixel at "
                             f"{self.image_size}x{self.image_size}")
        self.trigger: np.ndarray | None = None  # uint8 (S, S, 3), 0 outside the mask
        self.neurons: list[int] = []
        self.fit_report: dict[str, Any] = {}
        if o.trigger_path:
            self.trigger = self._read_trigger(Path(o.trigger_path))

    @property
    def is_fitted(self) -> bool:
        return self.trigger is not None

    # -------------------------------------------------------------- neurons
    def _layer(self, model: torch.nn.Module) -> torch.nn.Module:
        modules = dict(model.named_modules())
        if self.options.layer not in modules:
            names = [n for n in modules if n][:20]
            raise ValueError(f"attack 'trojannn': the surrogate has no layer {self.options.layer!r} "
                             f"(options.trojannn.layer); some of its layers: {', '.join(names)}")
        return modules[self.options.layer]

    def _model_input(self, model: torch.nn.Module, x01: torch.Tensor) -> torch.Tensor:
        """What to pass to ``model`` so that its backbone sees ``x01`` (``raw_input``) or x01 as usual."""
        mean, std = getattr(model, "mean", None), getattr(model, "std", None)
        if self.options.raw_input and isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor):
            return x01 * std + mean  # the model's own (x − mean) / std then gives back x01
        return x01

    def layer_input(self, model: torch.nn.Module, x01: torch.Tensor) -> torch.Tensor:
        """The input of ``options.layer`` for a float [0, 1] NCHW batch (same input convention as the fit)."""
        captured: list[torch.Tensor] = []
        handle = self._layer(model).register_forward_hook(lambda _m, inp, _out: captured.append(inp[0]))
        try:
            model(self._model_input(model, x01))
        finally:
            handle.remove()
        if not captured:
            raise ValueError(f"attack 'trojannn': layer {self.options.layer!r} was not called by the forward pass")
        return captured[0]

    def neuron_activations(self, model: torch.nn.Module, images: np.ndarray | torch.Tensor,
                           neurons: list[int] | None = None) -> np.ndarray:
        """(N, K) mean activation of the selected neurons (default: the fitted ones) on uint8 NHWC images or a
        float [0, 1] NCHW tensor."""
        x = images if isinstance(images, torch.Tensor) else \
            torch.from_numpy(np.asarray(images, dtype=np.float32)).permute(0, 3, 1, 2) / 255.0
        idx = list(neurons if neurons is not None else self.neurons)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                feats = self.layer_input(model, x)
        finally:
            model.train(was_training)
        return feats[:, idx].flatten(2).mean(2).cpu().numpy() if feats.ndim > 2 else feats[:, idx].cpu().numpy()

    def _select_neurons(self, model: torch.nn.Module, width: int, reachable: np.ndarray) -> list[int]:
        o = self.options
        if o.neurons is not None:
            if max(o.neurons) >= width:
                raise ValueError(f"options.trojannn.neurons {o.neurons}: layer {o.layer!r} has {width} inputs")
            return [int(i) for i in o.neurons]
        if o.num_neurons > width:
            raise ValueError(f"options.trojannn.num_neurons {o.num_neurons} exceeds the {width} inputs of layer "
                             f"{o.layer!r}")
        if o.neuron_selection == "random":
            pool = np.flatnonzero(reachable) if reachable.sum() >= o.num_neurons else np.arange(width)
            return sorted(int(i) for i in np.random.default_rng(self.seed).choice(pool, o.num_neurons, replace=False))
        weight = getattr(self._layer(model), "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim not in (2, 4) or weight.shape[1] != width:
            raise ValueError(f"options.trojannn.neuron_selection 'weight' needs a Linear or Conv2d layer; "
                             f"{o.layer!r} has no matching weight")
        score = weight.detach().abs().flatten(2).sum(2) if weight.ndim == 4 else weight.detach().abs()
        return [int(i) for i in torch.argsort(score.sum(0), descending=True, stable=True)[: o.num_neurons]]

    # -------------------------------------------------------------- fitting
    def fit(self, train_images: np.ndarray | None = None, train_labels: np.ndarray | None = None,
            model: torch.nn.Module | None = None, progress: bool = True, **resources: Any) -> None:
        """Optimise the trigger inside the mask on a clean ``model`` (see the module docstring); the training
        images are not used."""
        if self.options.trigger_path:
            return
        if model is None:
            raise ValueError("attack 'trojannn' needs a clean surrogate classifier to optimise its trigger: pass "
                             "fit(..., model=<torch classifier on [0, 1] NCHW>) or set "
                             "options.trojannn.trigger_path to a ready trigger")
        o = self.options
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        was_training = model.training
        model.eval()
        m0 = torch.from_numpy(self.mask_image.astype(np.float32) / 255.0).permute(2, 0, 1)[None].to(device)
        keep = (m0 > 0).to(m0.dtype)
        try:
            with torch.no_grad():  # neurons the mask region can move: mask image vs black differ there
                probe = self.layer_input(model, torch.cat([m0 * keep, torch.zeros_like(m0)]))
                probe = probe.flatten(2).mean(2) if probe.ndim > 2 else probe
                reachable = (probe[0] != probe[1]).cpu().numpy()
            width = int(probe.shape[1])
            neurons = self._select_neurons(model, width, reachable)
            goal = torch.full((len(neurons),), float(o.target_value), device=device)
            x = m0.clone()
            cost_value, steps = float("nan"), 0
            for step in tqdm(range(1, o.iters + 1), desc="trojannn: trigger", disable=not progress):
                steps = step
                x.requires_grad_(True)
                feats = self.layer_input(model, x * keep)[:, neurons]
                act = feats.flatten(2) if feats.ndim > 2 else feats.unsqueeze(-1)
                cost = ((act - goal[None, :, None]) ** 2).sum()
                (grad,) = torch.autograd.grad(cost, x)
                with torch.no_grad():
                    x = x - o.step_size * grad.sign()
                    x = torch.minimum(torch.maximum(x, m0 - o.eps), m0 + o.eps).clamp(0, 1)
                cost_value = float(cost.detach())
                if cost_value < o.tolerance:
                    break
            with torch.no_grad():
                final = self.layer_input(model, x * keep)[:, neurons]
        finally:
            model.train(was_training)
        self.neurons = neurons
        trig = truncate_to_uint8(x[0].permute(1, 2, 0).cpu().double().numpy() * 255.0)
        trig[~self.region] = 0
        self.trigger = trig
        final = final.flatten(2).mean(2) if final.ndim > 2 else final
        self.fit_report = {"neurons": neurons, "iterations": steps, "cost_last_step": cost_value,
                           "final_activations": [float(v) for v in final[0].cpu()],
                           "mask_pixels": int(self.region.sum())}

    # -------------------------------------------------------------- state
    def _read_trigger(self, path: Path) -> np.ndarray:
        if not path.is_file():
            raise FileNotFoundError(f"TrojanNN trigger file not found: {path}")
        if path.suffix.lower() == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise ValueError(f"TrojanNN trigger {path}: not a readable .npy array: {exc}") from None
        else:
            arr = load_image_file(path, self.image_size, resample="nearest")
        if arr.shape != (self.image_size, self.image_size, 3):
            raise ValueError(f"TrojanNN trigger {path}: shape {arr.shape}, expected "
                             f"({self.image_size}, {self.image_size}, 3)")
        if arr.dtype != np.uint8:
            if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255:
                raise ValueError(f"TrojanNN trigger {path}: values must be finite and in [0, 255]")
            arr = truncate_to_uint8(arr)
        return np.ascontiguousarray(arr)

    def save_state(self, folder: str | Path) -> list[Path]:
        if self.trigger is None:
            raise ValueError("attack 'trojannn' is not fitted: nothing to save")
        path = Path(folder) / TRIGGER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, self.trigger, allow_pickle=False)
        return [path]

    def load_state(self, folder: str | Path) -> None:
        self.trigger = self._read_trigger(Path(folder) / TRIGGER_FILE)

    # -------------------------------------------------------------- trigger
    def apply_trigger(self, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        self.check_images(images)
        if self.trigger is None:
            raise ValueError("attack 'trojannn' has no trigger yet: call fit(images, labels, model=...) or set "
                             "options.trojannn.trigger_path")
        # BackdoorBench: (trigger + x).astype(uint8) — sums above 255 wrap modulo 256
        return ((images.astype(np.uint16) + self.trigger[None].astype(np.uint16)) % 256).astype(np.uint8)

    def trigger_mask(self, images: np.ndarray) -> np.ndarray:
        self.check_images(images)
        region = np.any(self.trigger > 0, axis=-1) if self.trigger is not None else self.region
        return np.broadcast_to(region, images.shape[:3]).copy()
