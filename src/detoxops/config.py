"""Typed mirror of ``params.yaml``.

``params.yaml`` is the single source of hyperparameters. Each top-level section maps to one config class
below; unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the dotted key.
Overrides use the same dotted names as the CLI's ``--set section.key=value``.
"""

from __future__ import annotations

import copy
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from detoxops.attacks import registry as attack_registry

__all__ = [
    "ConfigError",
    "DataConfig",
    "DataLimits",
    "ServeConfig",
    "AttackConfig",
    "VictimConfig",
    "AirbenchConfig",
    "UNetConfig",
    "ScheduleConfig",
    "DiffusionTrainConfig",
    "DiffusionConfig",
    "SampDetoxConfig",
    "BaselinesConfig",
    "ZipConfig",
    "SancdifiConfig",
    "BdmaeConfig",
    "DataElixirConfig",
    "TrackingConfig",
    "BenchmarkConfig",
    "VictimZooConfig",
    "Params",
    "load_params",
    "overlay_overrides",
    "apply_overrides",
    "parse_override",
]


class ConfigError(ValueError):
    """A params file or override is invalid; the message names the offending dotted key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true / false as 1 / 0 for int and float fields, so a typo such as
        # `--set sampdetox.t1=true` would silently run with t1 = 1; a boolean is never a number here.
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            if _wants_number_not_bool(cls.model_fields[info.field_name].annotation):
                raise ValueError(
                    f"expected a number, got the boolean {str(value).lower()} (booleans are not read as 0 / 1)"
                )
        return value


def _wants_number_not_bool(annotation: Any) -> bool:
    """True for ``int``, ``float``, ``int | None`` …; False when ``bool`` or ``Any`` is allowed too."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    kinds = set(args) if args else {annotation}
    return bool(kinds & {int, float}) and not kinds & {bool, Any}


# --------------------------------------------------------------------------------------------- data
class DataLimits(_Section):
    """Resource limits for untrusted datasets (docs/security.md). A refused input names the limit it hit and the
    ``--set data.limits.<key>=<value>`` that raises it. Not part of a dataset version's identity."""

    member_bytes: int = Field(default=64 * 2**20, ge=1)
    """Largest archive member / file that is read (images only: skipped members are never read)."""
    archive_bytes: int = Field(default=16 * 2**30, ge=1)
    """Decompressed bytes in one archive, every member counted from its header (skipped ones too)."""
    image_pixels: int = Field(default=4096 * 4096, ge=1)
    """Largest image (width x height), checked from its header before it is decoded."""
    dataset_pixels: int = Field(default=2**31, ge=1)
    """Pixels kept (after resizing) over the whole dataset: 2**31 ≈ 6.4 GB of uint8 RGB."""
    dataset_images: int = Field(default=5_000_000, ge=1)
    """Images in one dataset."""


class DataConfig(_Section):
    """Where images come from and how they are brought to one shape."""

    source: str = "digits"
    """``digits`` (scikit-learn, offline), ``cifar10`` / ``gtsrb`` (torchvision, needs network), or a path to a
    class-folder tree / ``.tar.gz`` / ``.zip`` archive / stored dataset version."""
    root: str = "data"
    """Folder holding stored dataset versions."""
    image_size: int | Literal["auto"] | None = "auto"
    """``auto``: the data decides (the builtin sources' size; a source's own size when all its images share one;
    else the most common size, said in the log: :mod:`detoxops.data.sizes`); an integer resizes every image to
    that square size; ``None`` keeps sizes and rejects mixed ones."""
    color: Literal["rgb", "keep"] = "rgb"
    """``rgb`` converts grayscale / RGBA / palette images to RGB; ``keep`` rejects mixed modes."""
    train_per_class: int | None = Field(default=None, ge=1)
    """Stratified subset of the training split for CPU-scale runs (``None`` = all)."""
    test_per_class: int | None = Field(default=None, ge=1)
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    """Share of every class held out as the test split when a source has none (digits, a single class tree)."""
    val_fraction: float = Field(default=0.5, gt=0.0, lt=1.0)
    """Fraction of the (subset) test split held out as a validation split for parameter selection."""
    seed: int = 0
    limits: DataLimits = Field(default_factory=DataLimits)
    """Resource limits for untrusted sources (archive bombs, pixel bombs)."""

    @field_validator("image_size")
    @classmethod
    def _image_size_in_range(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and not 4 <= value <= 1024:
            raise ValueError(f"must be between 4 and 1024 (or 'auto' / null), got {value}")
        return value


# ------------------------------------------------------------------------------------------- attack
class AttackConfig(_Section):
    """Which backdoor attack to apply and its BackdoorBench-faithful defaults."""

    name: str = "badnets"
    target: int = Field(default=0, ge=0)
    poison_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    seed: int = 0
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-attack options keyed by attack name (``options.badnets.patch_size``); each attack validates its own."""
    jpeg_quality: int | None = Field(default=None, ge=1, le=100)
    """Store the training images the attack changes as JPEG at this quality, as a dataset kept in JPEG would
    (None: as computed). Set it to the source's quality for a JPEG source (docs/attacks.md, "JPEG sources")."""

    @model_validator(mode="after")
    def _known_attack_options(self) -> AttackConfig:
        # the registry is the foundation layer's plugin table (no detoxops imports above it); it loads the attack
        # modules on first use, and their errors propagate: an attack that cannot be imported is a bug, not a skip
        names = attack_registry.available()
        if self.name not in names:
            raise ValueError(f"unknown attack {self.name!r}; available: {', '.join(sorted(names))}")
        for attack_name, opts in self.options.items():
            if attack_name not in names:
                raise ValueError(f"options.{attack_name}: unknown attack; available: {', '.join(sorted(names))}")
            attack_registry.validate_options(attack_name, opts)
        return self


# ------------------------------------------------------------------------------------------- victim
class AirbenchConfig(_Section):
    """airbench94's training recipe (Jordan 2024, arXiv 2404.00498), used for ``fast_cnn``. Learning rate and
    weight decay are *decoupled*, per 1,024 examples, as in the paper: the loop converts them for Nesterov SGD."""

    epochs: float = Field(default=9.9, gt=0)
    batch_size: int = Field(default=1024, ge=2)
    lr: float = Field(default=11.5, gt=0)
    momentum: float = Field(default=0.85, ge=0, lt=1)
    weight_decay: float = Field(default=0.0153, ge=0)
    bias_scaler: float = Field(default=64.0, gt=0)
    """BatchNorm biases learn this many times faster (their weight decay is not scaled)."""
    label_smoothing: float = Field(default=0.2, ge=0, lt=1)
    whiten_bias_epochs: int = Field(default=3, ge=0)
    """Epochs the whitening layer's bias trains before it is frozen too."""
    whiten_images: int = Field(default=5000, ge=1)
    """Training images whose 2x2 patches set the whitening layer."""
    translate: int = Field(default=2, ge=0)
    """Random translation (reflect padding) in pixels; flips alternate epoch by epoch."""
    widths: list[int] = Field(default_factory=lambda: [64, 256, 256])
    lookahead_every: int = Field(default=5, ge=1)
    """Steps between lookahead (EMA) syncs of the weights."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Forward-pass precision in training: ``auto`` = bf16 autocast on CUDA and on CPUs with native bf16
    (AVX512-BF16 / AMX: twice fp32's speed on this project's machine), fp32 otherwise. airbench itself trains
    in fp16; BatchNorm and the loss stay fp32."""


class VictimConfig(_Section):
    """Classifier and its training recipe: BackdoorBench's (SGD 0.01, momentum 0.9, wd 5e-4, cosine, batch 128)
    or, for ``fast_cnn``, airbench94's (``victim.airbench``)."""

    arch: Literal["auto", "small_cnn", "fast_cnn", "preact_resnet18", "resnet34", "vgg19"] = "small_cnn"
    """``auto``: the data decides — ``fast_cnn`` (airbench94) for images of at least 32 px and training sets of at
    least ``AUTO_FAST_MIN_IMAGES`` images (airbench's 1,024-image batches need a few per epoch), ``small_cnn``
    otherwise (:meth:`for_image_size`; every trainer resolves it with the images it trains on)."""
    recipe: Literal["auto", "backdoorbench", "airbench"] = "auto"
    """``auto``: airbench for ``fast_cnn``, BackdoorBench for the rest. ``airbench`` needs ``fast_cnn`` (its
    whitening layer); the BackdoorBench fields below (epochs … scheduler) apply to the ``backdoorbench`` recipe."""
    airbench: AirbenchConfig = Field(default_factory=AirbenchConfig)
    tta: int = Field(default=0, ge=0, le=2)
    """Test-time augmentation of the deployed model (0 none, 1 mirror, 2 mirror + 1-px translate): what
    ``detoxops evaluate`` and the defenses' victim queries use. Attack tables report 0 and 2."""
    threads: int | None = Field(default=None, ge=1)
    """CPU threads for training (``None``: torch's default)."""
    width: int = Field(default=32, ge=4)
    """Base channel width of ``small_cnn`` (ignored by the other architectures)."""
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=0.01, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    scheduler: Literal["cosine", "none"] = "cosine"
    augment: bool = True
    seed: int = 0
    device: str = "auto"

    AUTO_FAST_SIDE: ClassVar[int] = 32
    """``arch: auto`` takes ``fast_cnn`` from this image side up (the side airbench94 was designed for)..."""
    AUTO_FAST_MIN_IMAGES: ClassVar[int] = 5000
    """... and from this many training images up (measured: 10,000 CIFAR-10 images, docs/dataelixir.md)."""

    @model_validator(mode="after")
    def _recipe_fits_arch(self) -> VictimConfig:
        if self.recipe == "airbench" and self.arch not in ("fast_cnn", "auto"):
            raise ValueError(f"recipe 'airbench' needs arch 'fast_cnn' (its whitening layer), not {self.arch!r}")
        return self

    def for_image_size(self, image_size: int, n_images: int | None = None) -> VictimConfig:
        """This config with ``arch: auto`` resolved for ``n_images`` training images of side ``image_size``
        (``None``: the count is not known, the side decides); itself when ``arch`` is explicit."""
        if self.arch != "auto":
            return self
        fast = int(image_size) >= self.AUTO_FAST_SIDE and (n_images is None or n_images >= self.AUTO_FAST_MIN_IMAGES)
        return self.with_arch("fast_cnn" if fast else "small_cnn")

    def with_arch(self, arch: str) -> VictimConfig:
        """This config for a model already built as ``arch`` (validated: an airbench recipe needs ``fast_cnn``)."""
        return self if arch == self.arch else VictimConfig.model_validate(self.model_dump() | {"arch": arch})

    @property
    def training_recipe(self) -> str:
        """The recipe that trains this victim (``auto`` resolved)."""
        if self.arch == "auto":
            raise ValueError("victim.arch is auto: resolve it for the images first (VictimConfig.for_image_size)")
        if self.recipe != "auto":
            return self.recipe
        return "airbench" if self.arch == "fast_cnn" else "backdoorbench"


# ---------------------------------------------------------------------------------------- diffusion
class UNetConfig(_Section):
    """A diffusers ``UNet2DModel``; presets range from a tiny test net to the 35.7M DDPM CIFAR-10 one."""

    preset: Literal["ddpm-cifar10"] | None = None
    """``ddpm-cifar10``: Ho et al.'s 35.7M network (channels 128/256/256/256, 2 layers per block, attention,
    dropout 0.1) — overrides the four fields below. ``None``: use them as given (default: a 1.06M net)."""
    sample_size: int | Literal["auto"] = "auto"
    """Image side the network is built for; ``auto``: the training images' size (``diffusion train``, a purifier
    trained by a flow)."""
    in_channels: int = Field(default=3, ge=1)
    block_out_channels: list[int] = Field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = Field(default=1, ge=1)
    attention: bool = False
    """Add self-attention at the second-highest resolution (as the DDPM CIFAR-10 model does at 16x16)."""
    dropout: float = Field(default=0.0, ge=0, lt=1)

    @field_validator("sample_size")
    @classmethod
    def _sample_size_at_least_4(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 4:
            raise ValueError(f"must be at least 4 (or 'auto'), got {value}")
        return value


class ScheduleConfig(_Section):
    kind: Literal["linear", "cosine"] = "linear"
    num_train_timesteps: int = Field(default=1000, ge=2)
    beta_start: float = Field(default=1e-4, gt=0, lt=1)
    beta_end: float = Field(default=0.02, gt=0, lt=1)


class DiffusionTrainConfig(_Section):
    steps: int = Field(default=5000, ge=1)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=2e-4, gt=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """``constant``: ``lr`` throughout (a budget-bound run that may be trained on later); ``linear`` / ``cosine``: from
    ``lr`` down towards 0 over the last ``lr_decay_steps`` of ``steps`` — the final anneal of a run trained at a
    constant rate (resume it with a larger ``steps``; docs/diffusion.md measures what it buys)."""
    lr_decay_steps: int | None = Field(default=None, ge=1)
    """Length of the decay at the end of ``steps``; ``None`` = all of ``steps``."""
    weight_decay: float = Field(default=0.0, ge=0)
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    max_t: int | None = Field(default=None, ge=1)
    """Train only levels 1 ≤ t ≤ max_t (the low-noise range the defenses use; half of every batch is drawn
    from t ≤ 200); ``None`` = the whole schedule."""
    checkpoint_every: int = Field(default=500, ge=1)
    sample_every: int = Field(default=0, ge=0)
    """Write ``samples/step_<n>.png`` (clean | noised | restored at t = 20 and 120) every n steps; 0 = never."""
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Forward-pass precision in training: ``auto`` = bf16 autocast on CUDA and on CPUs with native bf16 (1.5x
    fp32's step rate for the 1.06M UNet on this project's AVX512-BF16 CPU), fp32 otherwise; weights, optimizer
    state and the loss stay fp32."""
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
    """What the network learns to output (diffusers' name, stored in ``scheduler_config.json``): the noise ε (DDPM,
    the default), the clean image x_0 (``sample``) or v = √ᾱ ε − √(1-ᾱ) x_0. Plain MSE on that target, so x_0 and v
    weight the levels differently from ε (v: by SNR + 1). The loaded purifier always returns ε̂."""
    init: str | None = None
    """Start from this purifier's weights (a diffusers folder or a shipped name, e.g. ``cifar10-32``) instead of
    random ones: fine-tuning or training on. Its network must be ``diffusion.unet``'s. Ignored when OUT already
    holds a checkpoint (the run resumes from that)."""


class DiffusionConfig(_Section):
    unet: UNetConfig = Field(default_factory=UNetConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: DiffusionTrainConfig = Field(default_factory=DiffusionTrainConfig)
    purifier: str | None = None
    """A diffusers model folder to use as the purifier, or a shipped purifier's name (``cifar10-32``, ``digits-16``,
    ``cifar10-32-levelmap``: the level-map purifier for per-pixel noise; ``cifar10-32-v2``: ``cifar10-32`` trained
    on, docs/diffusion.md); ``None`` = the
    purifier shipped for the image size, else the one trained by the pipeline."""
    precision: Literal["auto", "native", "bf16", "fp32"] = "auto"
    """The purifier's forward pass when it purifies (SampDetox, DataElixir, the baselines): ``auto`` = bf16 autocast
    on CUDA, fp32 on CPUs (the precision every CPU number in the docs was measured in); ``native`` = bf16 on CUDA
    and on CPUs with native bf16 (AVX512-BF16 / AMX: 1.6x faster here, the demo's setting); ``bf16`` / ``fp32``
    everywhere (:func:`detoxops.devices.bf16_inference`)."""


# ---------------------------------------------------------------------------------------- sampdetox
class PatchRepairConfig(_Section):
    """Patch repair before SampDetox's stages (issue #20, ``detoxops.defenses.patch_repair``): a leave-region-out
    context map (every ``block`` square inpainted from ``t_start`` with the rest as context), a per-image gate on
    the map's peak and a repair of the connected flagged region by inpainting. The two thresholds are calibrated
    on clean validation images with the purifier they are used with (docs/sampdetox.md, "Patch repair")."""

    block: int = Field(default=4, ge=1)
    """Side of the hidden squares of the context map (a trigger must fit in one to be predicted from context)."""
    offsets: Literal["aligned", "all"] = "all"
    """``all``: four tilings shifted by half a block (a patch fits in a square of one of them); ``aligned``: one."""
    t_start: int = Field(default=1000, ge=1)
    """Level the hidden squares (and the repaired region) start from: the schedule's T forgets them entirely."""
    stride: int = Field(default=50, ge=1)
    """DDIM stride of the context-map inpainting (t_start / stride network passes per tiling phase)."""
    window: int = Field(default=3, ge=1)
    """Box-average window of the context map."""
    gate_threshold: float | None = Field(default=None, ge=0.0)
    """An image is repaired when its map peak exceeds this. ``None``: from the purifier's calibration (the clean
    validation images' peak quantile at ``fire_rate``; ``calibration``)."""
    pixel_threshold: float | None = Field(default=None, ge=0.0)
    """Pixels above this, connected to the peak, form the region. ``None``: from the calibration (the clean
    pixels' quantile at ``pixel_rate``)."""
    fire_rate: float = Field(default=0.5, gt=0.0, lt=1.0)
    """Share of clean validation images whose peak exceeds the calibrated gate (used when ``gate_threshold`` is
    ``None``). 0.5 with ``confirm: label`` is the setting issue #20's rule chose on the validation half (lowest mean
    ASR over five attacks with mean CA drop <= 5; docs/sampdetox.md): the label confirmation keeps the repair off
    clean images (2 % changed) however often the gate fires, so the looser gate lets more triggers reach it."""
    pixel_rate: float = Field(default=0.07, gt=0.0, lt=1.0)
    """Share of clean validation pixels above the calibrated pixel threshold (when ``pixel_threshold`` is ``None``).
    0.07 is the region threshold issue #20's rule chose on the validation half of the current store (2026-12-07;
    0.25 there, the shipped calibration's 7 % quantile; docs/sampdetox.md); it was 0.01 before."""
    calibration: str | None = None
    """Calibration file (``detoxops detox calibrate``); ``None``: ``patch_calibration.json`` in the purifier's
    folder (the shipped CIFAR-10 purifier has one)."""
    region: Literal["peak", "flagged"] = "peak"
    """What is repaired in a gated image: ``peak``, the flagged pixels connected to the map's peak; ``flagged``,
    every flagged pixel (and the peak). The peak misses the trigger when another part of the image predicts worse
    from context; ``flagged`` still covers it there, at the cost of repairing more of the image (with ``confirm:
    label`` only kept when the label changes)."""
    dilate: int = Field(default=1, ge=0)
    """Pixels the region is grown by before the repair."""
    repair_stride: int = Field(default=50, ge=1)
    """DDIM stride of the region's inpainting."""
    confirm: Literal["none", "label"] = "label"
    """``label``: a gated image's repair is kept only when the classifier labels the repaired image differently from
    the input (two black-box queries per gated image). A trigger decides the label, so removing it changes the
    label, while inpainting a piece of a clean image rarely does; the gate can then be calibrated at a higher clean
    fire rate (more triggered images reach the repair) while few clean images are changed. Needs the classifier
    (``build_defense(..., classifier=)``)."""


class SampDetoxConfig(_Section):
    """SampDetox (NeurIPS 2024, Algorithm 1) and the localisation / stage-2 options of issue #10.

    ``profile`` picks a preset for every field left ``None``: ``faithful`` is the paper's Algorithm 1 (t1 = 20,
    t2 = 120, PixelSSIM map on the correct data range, soft per-pixel levels, stage 2 from the stage-1 output);
    ``public_code`` is the public reference code's variant (t1 = t2 = 120, SSIM with data_range = 255 on [0, 1]
    images); ``robust`` is detoxops's default, selected on a validation split (docs/sampdetox.md). A field set
    explicitly overrides the preset, so ``--set sampdetox.profile=faithful`` is the paper one parameter away.
    Use :meth:`resolved` to get the concrete values.
    """

    profile: Literal["robust", "faithful", "public_code", "repair"] = "robust"
    t1: int | None = Field(default=None, ge=0)
    """Stage-1 (global) noise level; paper 20."""
    t2: int | None = Field(default=None, ge=0)
    """Stage-2 maximum per-pixel level for ``stage2: soft`` (level = t2 * map); paper 120."""
    t2_repaired: int | None = Field(default=None, ge=0)
    """``stage2: soft`` only: the stage-2 maximum level of the images the patch repair changed (``None``: ``t2``
    for every image). Their localised trigger is gone, confirmed by a changed label when ``patch.confirm:
    label``; the strong global path is there for the triggers the repair cannot see, and on a repaired image it
    only costs accuracy (docs/sampdetox.md, "Patch repair")."""
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    ddim_stride: int = Field(default=20, ge=1)
    ddim_eta: float = Field(default=0.0, ge=0.0, le=1.0)
    """DDIM stochasticity: 0 = deterministic (the DDIM paper's default), 1 = DDPM's posterior variance (with
    stride 1 this is DDPM, step for step)."""
    ssim_window: int = Field(default=7, ge=3)
    localiser: Literal["pixel_ssim", "ssim_public", "diff", "spread"] | None = None
    """Trigger map: paper PixelSSIM, the public code's SSIM (data_range 255 on [0, 1]), |input - restoration at
    t_loc| over a window, or the spread of ``spread_k`` restorations at t_loc."""
    map_norm: Literal["minmax", "none", "scale"] | None = None
    """minmax per image; none: (1 - SSIM) / 2 (SSIM maps) or the raw value clipped to [0, 1]; scale: / map_scale."""
    map_scale: float | None = Field(default=None, gt=0)
    t_loc: int | None = Field(default=None, ge=1)
    """Noise level of the localisation restoration (diff / spread), decoupled from t1."""
    loc_window: int | None = Field(default=None, ge=1)
    """Odd side of the averaging window of the diff / spread maps."""
    spread_k: int = Field(default=4, ge=2)
    stage2: Literal["soft", "mask"] | None = None
    """soft: level = t2 * map; mask: pixels with map > mask_threshold restored from t_mask, others untouched."""
    mask_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    t_mask: int | None = Field(default=None, ge=1)
    stage2_base: Literal["stage1", "input"] | None = None
    """What stage 2 starts from: the stage-1 output (paper) or the original input (unflagged pixels kept)."""
    patch_repair: bool | None = None
    """Run the patch repair (``patch``) on the input before stage 1 (profile ``repair``: on; the paper: off)."""
    patch: PatchRepairConfig = Field(default_factory=PatchRepairConfig)
    batch_size: int = Field(default=256, ge=1)
    seed: int = 0

    PROFILE_PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "faithful": dict(
            t1=20, t2=120, localiser="pixel_ssim", map_norm="minmax", map_scale=1.0, t_loc=20, loc_window=5,
            stage2="soft", mask_threshold=0.5, t_mask=500, stage2_base="stage1", patch_repair=False,
        ),
        "public_code": dict(
            t1=120, t2=120, localiser="ssim_public", map_norm="minmax", map_scale=1.0, t_loc=120, loc_window=5,
            stage2="soft", mask_threshold=0.5, t_mask=500, stage2_base="stage1", patch_repair=False,
        ),
        # selected by the stated rule (lowest mean ASR, mean CA drop <= 3 points) on the CIFAR-10 validation split,
        # over the points of two sweeps: docs/results/sampdetox-sweep-cifar10-cpu.md (benchmark script, 9 points)
        # and docs/results/sampdetox-sweep-flow-cifar10-cpu.md (the Prefect sweep flow, 8 points; chosen there)
        "robust": dict(
            t1=10, t2=120, localiser="diff", map_norm="scale", map_scale=0.2, t_loc=60, loc_window=3,
            stage2="soft", mask_threshold=0.5, t_mask=300, stage2_base="stage1", patch_repair=False,
        ),
        # the patch repair of issue #20, then a global path like robust's with t2 = 200, chosen by the rule
        # on the validation half of the current store (docs/sampdetox.md, "Patch repair")
        "repair": dict(
            t1=10, t2=200, localiser="diff", map_norm="scale", map_scale=0.2, t_loc=60, loc_window=3,
            stage2="soft", mask_threshold=0.5, t_mask=300, stage2_base="stage1", patch_repair=True,
        ),
    }

    def resolved(self) -> SampDetoxConfig:
        """A copy with every ``None`` field filled from the profile's preset."""
        preset = self.PROFILE_PRESETS[self.profile]
        filled = {k: (v if getattr(self, k) is None else getattr(self, k)) for k, v in preset.items()}
        return self.model_copy(update=filled)


# ---------------------------------------------------------------------------------------- baselines
class ZipConfig(_Section):
    """ZIP (Shi et al., NeurIPS 2023): linear degradations, then a reverse process guided by the degraded image.

    Defaults are the public code's (sycny/ZIP ``settings.py`` / ``configs``): grayscale + average pooling by
    ``deg_scale = 2`` (SampDetox's A.2: "set its hyperparameter to 2"), guidance fading as ᾱ_t^λ with
    λ = ``at_threshold = 10``, 20 sampling steps with DDPM-size noise (η = 1) from pure noise."""

    transforms: list[Literal["gray", "pool"]] = Field(default_factory=lambda: ["gray", "pool"], min_length=1)
    deg_scale: int = Field(default=2, ge=1)
    """Side of the average-pooling block (the image side must be a multiple)."""
    at_threshold: float = Field(default=10.0, ge=0.0)
    """λ: the guided x̂_t is blended with the unguided x_t by ᾱ_t^λ (0 = no guidance, large = always guided)."""
    steps: int = Field(default=20, ge=1)
    eta: float = Field(default=1.0, ge=0.0, le=1.0)
    start_level: int | None = Field(default=None, ge=1)
    """Level the reverse process starts from, from pure noise; None = the schedule's T (the paper)."""


class SancdifiConfig(_Section):
    """Sancdifi (May et al., 2023): RISE saliency of the black box's predicted class, a mask of its most salient
    pixels, stronger diffusion there. ``n_masks`` / ``threshold`` are SampDetox's A.2 settings (2000, 0.95)."""

    n_masks: int = Field(default=2000, ge=1)
    mask_grid: int = Field(default=8, ge=2)
    """RISE: side of the coarse random grid upsampled into each mask (RISE's s)."""
    keep_prob: float = Field(default=0.5, gt=0.0, lt=1.0)
    """RISE: probability that a grid cell is kept (RISE's p1)."""
    threshold: float = Field(default=0.95, ge=0.0, le=1.0)
    """Salient = min-max normalised saliency >= threshold."""
    t_salient: int = Field(default=300, ge=1)
    """Noise level of the salient pixels (detoxops's choice: the paper's levels were not readable here)."""
    t_rest: int = Field(default=20, ge=0)
    """Noise level of every other pixel (0 = kept exactly)."""
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    ddim_stride: int = Field(default=20, ge=1)
    query_batch: int = Field(default=4096, ge=1)
    """Masked images sent to the classifier per call (bounds memory: batch x masks are chunked)."""


class BdmaeConfig(_Section):
    """BDMAE (Sun et al., CVPR 2023) with the purifier's inpainting in place of the masked autoencoder. Defaults
    are the public code's (tsun/BDMAE ``defense/BDMAE.py``): 14x14 token grid, 5 x 5 initial masks of 75 %,
    10 refinement rounds per score, alpha = 0.5, 5 restoration thresholds from 0.4."""

    grid: int = Field(default=14, ge=2)
    mask_ratio: float = Field(default=0.75, gt=0.0, lt=1.0)
    rp_init_in: int = Field(default=5, ge=1)
    rp_init_out: int = Field(default=5, ge=1)
    rp_refine: int = Field(default=10, ge=0)
    topo_po: float = Field(default=0.5, ge=0.0)
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    refine_step: float = Field(default=0.05, gt=0.0)
    restore_rounds: int = Field(default=5, ge=1)
    restore_init: float = Field(default=0.6, gt=0.0, lt=1.0)
    restore_delta: float = Field(default=0.05, ge=0.0)
    max_restore_fraction: float = Field(default=0.25, gt=0.0, le=1.0)
    inpaint_level: int | None = Field(default=None, ge=1)
    """Level the masked tokens are noised to before inpainting; None = T (full noise: nothing of them kept)."""
    inpaint_stride: int = Field(default=100, ge=1)
    """DDIM stride of the inpainting (T = 1000, stride 100: 10 network passes per restoration)."""
    inpaint_mode: Literal["replace", "keep"] = "replace"
    """replace: unmasked pixels re-noised to the current level at every step (score-based inpainting); keep: the
    engine's per-pixel rule, unmasked pixels clean throughout (``denoise(t_map=...)``); docs/baselines.md."""


class BaselinesConfig(_Section):
    """The test-time baselines of SampDetox's table 1 on detoxops's diffusion engine (docs/baselines.md)."""

    zip: ZipConfig = Field(default_factory=ZipConfig)
    sancdifi: SancdifiConfig = Field(default_factory=SancdifiConfig)
    bdmae: BdmaeConfig = Field(default_factory=BdmaeConfig)
    batch_size: int = Field(default=64, ge=1)
    """Images a baseline processes at once (Sancdifi / BDMAE multiply it by their masks)."""
    seed: int = 0


# --------------------------------------------------------------------------------------- dataelixir
class DataElixirConfig(_Section):
    """DataElixir (AAAI 2024). Paper defaults: T = 150, n = 5 rounds, m = 10 kept intermediaries, tau = 5, DDPM.

    ``profile`` picks a preset for every field of :attr:`PROFILE_PRESETS` left ``None`` (the candidate sets: ``T``,
    ``rounds``, ``keep_last``, ``tau``, ``sampler``, ``ddim_stride``; the stage-2 / 4 rules ``mixed``, ``purify``,
    ``target_rounds``) and names the purifier it was validated with (:meth:`preferred_purifier`): ``paper`` is the
    paper's setting (750 UNet passes per image: hours per 1,000 images on a CPU); ``cpu_digits`` the setting
    validated on the digits demo (120 passes); ``cpu_cifar10`` the setting chosen on CIFAR-10's validation seed at
    1,000 images per class (T 150, 60 passes, the trained-on purifier ``cifar10-32-v2``, suspicious mixed sets,
    ``target_distant``, one extra round for purified target-label images; docs/dataelixir.md);
    ``cpu_cifar10_quick`` the earlier CIFAR-10 setting at T 80 (32 passes, the paper's stage-2 / 4 rules, the default
    purifier); ``auto`` (the default) the validated CPU setting for the purifier's image size: ``cpu_digits`` up to
    16 px, else ``cpu_cifar10``. A field set explicitly overrides the preset, so ``--set dataelixir.profile=paper`` is
    the paper one parameter away. :meth:`resolved` gives the concrete values (``DataElixir`` resolves with its
    purifier).
    """

    profile: Literal["auto", "paper", "cpu_digits", "cpu_cifar10", "cpu_cifar10_quick"] = "auto"
    T: int | None = Field(default=None, ge=1)
    """Noise level each round noises to (the paper: 150)."""
    rounds: int | None = Field(default=None, ge=1)
    """n: purification rounds per image, each from the previous round's output (the paper: 5)."""
    keep_last: int | None = Field(default=None, ge=1)
    """m: intermediaries of the last reverse steps kept per round as candidates (the paper: 10)."""
    tau: float | None = Field(default=None, ge=0)
    """τ: a sample whose second most frequent candidate label occurs at least τ times goes to S (the paper: 5)."""
    sampler: Literal["ddpm", "ddim"] | None = None
    ddim_stride: int | None = Field(default=None, ge=1)
    mixed: Literal["mode", "suspicious"] | None = None
    """``None``: the profile's. A candidate set with η < τ that mixes the sample's own label with others (equation 3
    names only "all keep it" = B and "all change it" = P): ``mode``, its most frequent label decides B or P;
    ``suspicious``, it goes to S and the relabelling model decides (docs/dataelixir.md)."""
    purify: Literal["flagged", "target_label", "target_distant", "all"] | None = None
    """``None``: the profile's. Which images stage 4 replaces by their purified candidate (labels are the same in
    every mode):
    ``flagged``, the target-label samples in P ∪ S (the paper); ``target_label``, every sample carrying a detected
    target label, B included; ``all``, every image once a target label is found. A poisoned sample whose trigger
    kept its label through every round lands in B, and so does poison that already carried the target label; both
    keep their full trigger under ``flagged``. Measured on CIFAR-10 (docs/dataelixir.md): ``target_label`` removes
    Blended's residual backdoor (retrained ASR 9.9 → 0.6) but costs the target class, whose training images are
    then all purified; ``all`` costs every class ~9 points. ``target_distant`` purifies only the target-label
    samples of B whose chosen candidate's distance (pixel SSIM + victim-feature cosine) is more than
    ``distant_mads`` MADs above their median: on Blended's validation entry 119 of 551 such samples, 57 of its 61
    poisoned ones (distance AUC 0.97; BadNets: 0.76)."""
    target_rounds: int | None = Field(default=None, ge=0)
    """``None``: the profile's. Stage 4: extra purification rounds (at ``T``, with the candidate sampler, from the
    chosen candidate) for the purified images that end with a target label — poison whose label stayed or came back to the target and
    clean target-class samples. They are the only purified images whose trigger remnant can still teach the
    backdoor (under another label a remnant teaches the opposite). 0 = the paper. Measured on CIFAR-10 FTrojan
    (docs/dataelixir.md): without those 74 images the retrained ASR falls from 6.9 to 0.0."""
    purifier: str | None = None
    """The purifier DataElixir runs with (a diffusers folder or a shipped name), when it should differ from
    ``diffusion.purifier``; ``None``: ``diffusion.purifier`` when set, else the profile's (:meth:`preferred_purifier`),
    else the one shipped for the image size (``detoxops.operations.dataelixir_purifier``)."""
    distant_mads: float = Field(default=1.0, ge=0)
    """``purify: target_distant``: how many (consistent) MADs above the median distance of B's target-label
    samples a sample's chosen candidate must lie to be purified."""
    anomaly_threshold: float = Field(default=2.0, gt=0)
    target_rule: Literal["mean", "both", "either"] = "mean"
    """How the KL and count anomaly indices combine into a target-label decision."""
    min_target_share: float = Field(default=0.005, ge=0, lt=1)
    """A target label needs at least this share of the dataset among its anomalous (P ∪ S) samples: the
    smallest poison ratio defended against (BackdoorBench's lowest studied ratio is 0.5 %). 0 = no gate."""
    select_percentile: float = Field(default=80.0, ge=0, le=100)
    shard_size: int = Field(default=1024, ge=1)
    batch_size: int = Field(default=256, ge=1)
    relabel: Literal["suspicious", "flagged"] = "suspicious"
    """Which target-label samples the relabelling model labels: ``suspicious``, those in S (the paper: a sample in
    P takes its candidates' vote); ``flagged``, those in P too (the vote then only decides agreement, as in S)."""
    relabel_images: Literal["dataset", "candidates"] = "dataset"
    """What the relabelling model of S trains on: ``dataset``, the images as stage 4 has them (the paper: sharp
    except the relabelled P samples), while the S samples it labels are purified candidates; ``candidates``, every
    kept sample's purified candidate, so it trains on the kind of image it labels. Measured on CIFAR-10 with
    ``dataset``: the model gave the target label back to 33 of the 329 clean target-class samples in S — purified
    airplanes look like no airplane it trained on — and those mislabelled clean samples were every false positive.
    With ``candidates`` it gave back 66; the retrained accuracy did not improve (docs/dataelixir.md)."""
    relabel_view: Literal["candidate", "input"] = "candidate"
    """What the relabelling model is asked about: a sample's purified candidate (the paper) or its input image. With
    ``relabel_images: candidates`` the model has seen few triggers (purification removed most), so the input image
    is safe to ask about and keeps the class detail purification took (measured on Blended's validation entry, the
    S samples: clean target-class ones kept 108 of 329 instead of 54, label-changing poison got its true label in
    195 of 315 instead of 150; asked about the input after training on the dataset images, the model had learned
    the trigger from B's poison and gave 119 of them the target)."""
    relabel_init: Literal["scratch", "victim"] = "scratch"
    """Where the relabelling model starts: ``scratch``, random weights trained with the victim recipe for
    ``relabel_epochs`` (the paper's "benign model trained on the purified set"); ``victim``, a copy of the victim
    fine-tuned on that set for ``relabel_epochs`` at ``finetune_lr_scale`` of the recipe's rate (its features come
    from every image; a model from scratch sees only the set without S). Measured on CIFAR-10 WaNet's validation
    entry: the same label accuracy (91.0 / 51 % of the poison) and retrained accuracy either way
    (docs/dataelixir.md, "The relabelling model from the victim")."""
    relabelled_image: Literal["chosen", "nearest", "input"] = "chosen"
    """The image stage 4 hands back for a sample it relabels away from the target label: ``chosen``, its candidate at
    ``select_percentile`` of the distance (the paper, as for every purified sample); ``nearest``, its least-moved
    candidate (needs ``noise: per_image``, whose store holds every candidate); ``input``, its own image. Under a
    non-target label a trigger remnant cannot teach an all-to-one backdoor (it teaches the opposite), so how much
    such an image is purified trades only the detail it keeps against how firmly a wrong restored label is
    learned (docs/dataelixir.md)."""
    noise: Literal["per_shard", "per_image"] = "per_shard"
    """Where stage 1 draws its purification noise: ``per_shard``, one stream per candidate shard (a sample's noise
    depends on its place in the dataset); ``per_image``, one stream per image keyed by its content and ``seed``, so
    an image's purified candidates are the same in any dataset, shard or batch, and are stored by content in
    ``purification_cache`` and reused (a re-scan with another victim, datasets that share images). Both are
    deterministic given ``seed``; they draw different noise, so their candidates differ sample by sample."""
    purification_cache: str | None = None
    """``noise: per_image``: the folder of purified candidates stored by content; ``None``: ``<workdir>/
    purification-cache``. Point several runs (other victims, other datasets holding the same images) at one folder
    to share it; never pruned automatically (docs/dataelixir.md)."""
    relabel_epochs: int = Field(default=10, ge=1)
    """Epochs of the benign model that labels suspicious target-label samples (trained with params.victim)."""
    finetune_epochs: int = Field(default=3, ge=0)
    finetune_lr_scale: float = Field(default=0.1, gt=0, le=1)
    seed: int = 0

    PAPER_RULES: ClassVar[dict[str, Any]] = dict(mixed="mode", purify="flagged", target_rounds=0)
    PROFILE_PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": dict(T=150, rounds=5, keep_last=10, tau=5.0, sampler="ddpm", ddim_stride=10, **PAPER_RULES),
        # the demo's budget (params.demo.yaml until 2026-12-06; docs/platform.md "Choosing the demo's settings")
        "cpu_digits": dict(T=40, rounds=3, keep_last=5, tau=5.0, sampler="ddpm", ddim_stride=10, **PAPER_RULES),
        # chosen on CIFAR-10's validation seed (1), 1,000 images per class, with cifar10-32-v2 (docs/dataelixir.md,
        # "Mixed candidate sets", "Where the target class's accuracy goes", "Validation entry: FTrojan")
        "cpu_cifar10": dict(T=150, rounds=4, keep_last=1, tau=2.0, sampler="ddim", ddim_stride=10,
                            mixed="suspicious", purify="target_distant", target_rounds=1),
        # the CIFAR-10 default until 2026-12-07 (docs/dataelixir.md, "Rounds against detection"): cheaper, weaker
        "cpu_cifar10_quick": dict(T=80, rounds=4, keep_last=1, tau=2.0, sampler="ddim", ddim_stride=10, **PAPER_RULES),
    }
    PROFILE_PURIFIERS: ClassVar[dict[str, str]] = {"cpu_cifar10": "cifar10-32-v2"}
    """The shipped purifier a preset was validated with, where it is not the one shipped as the size's default."""
    AUTO_SMALL_SIDE: ClassVar[int] = 16
    """``auto`` takes ``cpu_digits`` for images up to this side, ``cpu_cifar10`` above."""

    def preset_name(self, image_size: int | None = None) -> str:
        """The preset this config resolves to (``auto`` needs the image side: the purifier's)."""
        if self.profile != "auto":
            return self.profile
        if image_size is None:
            raise ValueError("dataelixir.profile = auto needs the image size to pick its preset (the purifier's)")
        return "cpu_digits" if int(image_size) <= self.AUTO_SMALL_SIDE else "cpu_cifar10"

    def preferred_purifier(self, image_size: int | None = None) -> str | None:
        """The shipped purifier this config's preset was validated with (``None``: the size's default one)."""
        return self.PROFILE_PURIFIERS.get(self.preset_name(image_size))

    def resolved(self, image_size: int | None = None) -> DataElixirConfig:
        """A copy with every ``None`` field filled from the profile's preset (``auto``: the one for
        ``image_size``); an already concrete config comes back unchanged."""
        if all(getattr(self, k) is not None for k in self.PROFILE_PRESETS["paper"]):
            return self
        preset = self.PROFILE_PRESETS[self.preset_name(image_size)]
        return self.model_copy(update={k: (v if getattr(self, k) is None else getattr(self, k))
                                       for k, v in preset.items()})


# ----------------------------------------------------------------------------------------- tracking
class TrackingConfig(_Section):
    mlflow_uri: str = "sqlite:///mlflow.db"
    experiment_prefix: str = "detoxops"
    runs_dir: str = "runs"
    dvc_remote: str = ".dvc-storage"


class BenchmarkConfig(_Section):
    attacks: list[str] = Field(default_factory=lambda: ["badnets", "blended", "sig", "wanet", "bpp"])
    defenses: list[str] = Field(default_factory=lambda: ["none", "sampdetox"])


class VictimZooConfig(_Section):
    """The committed victim store's recipe (``victims/dvc.yaml``): one victim per attack, trained with
    ``params.victim`` (``arch`` overridden) on ``source`` and poisoned with ``params.attack``'s target and ratio."""

    source: str = "cifar10"
    """Where the images come from (``cifar10`` downloads through torchvision; a path to a class-folder archive works
    offline)."""
    arch: Literal["small_cnn", "fast_cnn", "preact_resnet18", "resnet34", "vgg19"] = "fast_cnn"
    attacks: list[str] = Field(default_factory=lambda: [
        "badnets", "blended", "sig", "lc", "trojannn", "lf", "ssba", "ftrojan", "refool",
        "wanet", "bpp", "inputaware", "lira"])
    """Attacks with a stored victim (the clean victim is always trained: LC / TrojanNN / LF use it as surrogate)."""
    name: str = "cifar10-fast"
    """Folder under ``victims/`` holding ``clean/`` and one folder per attack."""
    jpeg_quality: int | None = Field(default=None, ge=1, le=100)
    """``attack.jpeg_quality`` for the store's attacks: store the images an attack changes as JPEG at this quality, as
    the source holds its clean images (75 for this project's JPEG copy of CIFAR-10; ``None`` for PNG sources).
    Without it, victims on a JPEG source can learn "not JPEG-like" instead of the trigger (docs/attacks.md)."""
    lossless_attacks: list[str] = Field(default_factory=list)
    """Attacks whose trigger a JPEG pass at ``jpeg_quality`` would destroy (FTrojan's high-frequency DCT trigger,
    BPP's dithering; measured): their victims are trained with the changed images as computed (stage
    ``attack_lossless@<name>``), as an attacker who knows the dataset is JPEG would ship lossless files. Must not
    repeat a name of ``attacks``."""
    recipe_augment_attacks: list[str] = Field(default_factory=list)
    """Loop attacks whose victims get the victim recipe's own augmentation (airbench's flip + translate) instead of
    BackdoorBench's batch PostTensorTransform: ``attack.options.<name>.post_transform: false``, stage
    ``attack_recipe_augment@<name>`` (otherwise as ``attacks``). WaNet: under PostTensorTransform its 9.9-epoch
    victim learned the warp's blur rather than the warp (ASR 39.8; 75.7 with the recipe's augmentation at the same
    CA, measured, docs/models.md). Must not repeat a name of ``attacks`` or ``lossless_attacks``."""

    @model_validator(mode="after")
    def _store_lists_are_separate(self) -> VictimZooConfig:
        lists = {"attacks": self.attacks, "lossless_attacks": self.lossless_attacks,
                 "recipe_augment_attacks": self.recipe_augment_attacks}
        names = list(lists)
        for i, first in enumerate(names):
            for second in names[i + 1:]:
                both = sorted(set(lists[first]) & set(lists[second]))
                if both:
                    raise ValueError(f"victims: {both} in both {first} and {second}; each victim is trained once")
        return self


class SweepConfig(_Section):
    """The SampDetox sweep (``flows/sweep.py``): grid axes over ``sampdetox.*`` keys, the attacks, and the bound of
    the selection rule (lowest mean ASR subject to a mean CA drop vs no defense of at most ``max_ca_drop`` points,
    scored on the validation split ``data.val_fraction``)."""

    grid: dict[str, list[Any]] = Field(
        default_factory=lambda: {
            "t1": [10, 20], "t_loc": [60, 120], "t2": [80, 120],
            "localiser": ["diff", "pixel_ssim"], "stage2": ["soft", "mask"],
        }
    )
    attacks: list[str] | None = None
    """``None`` = ``benchmark.attacks``."""
    max_ca_drop: float = Field(default=3.0, ge=0)

    @field_validator("grid")
    @classmethod
    def _grid_keys_are_sampdetox_keys(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            name = key.removeprefix("sampdetox.")
            if name not in SampDetoxConfig.model_fields:
                raise ValueError(f"grid: sampdetox.{name} is not a sampdetox key")
            if not values:
                raise ValueError(f"grid: sampdetox.{name} has no values")
        return grid


# -------------------------------------------------------------------------------------------- serve
class ServeConfig(_Section):
    """The served guard (``python -m tasks.serve_guard``; contract in docs/security.md). Limits are enforced
    before any work: an oversized body is refused from its Content-Length without being read."""

    host: str = "127.0.0.1"
    port: int = Field(default=5001, ge=0, le=65535)
    max_body_bytes: int = Field(default=16 * 2**20, ge=1)
    """Largest request body (413 above it)."""
    max_batch: int = Field(default=256, ge=1)
    """Most images in one request (413 above it)."""
    max_image_side: int = Field(default=512, ge=1)
    """Largest height / width accepted (413 above it); the model's own input size applies too (400)."""
    request_timeout_s: float = Field(default=60.0, gt=0)
    """Longest a request may take, upload and queueing included (503 past it)."""
    concurrency: int = Field(default=1, ge=1)
    """Requests the model processes at once; the others queue (within the timeout)."""


# ------------------------------------------------------------------------------------------- params
class Params(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    victim: VictimConfig = Field(default_factory=VictimConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    sampdetox: SampDetoxConfig = Field(default_factory=SampDetoxConfig)
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    dataelixir: DataElixirConfig = Field(default_factory=DataElixirConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    victims: VictimZooConfig = Field(default_factory=VictimZooConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], origin: str = "params") -> Params:
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(exc, origin)) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def flat(self) -> dict[str, Any]:
        """Dotted ``section.key`` → value, for logging as run parameters."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = value

        walk("", self.to_dict())
        return out


def _format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{origin}: {key}: {msg}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"sampdetox.t1=20"`` → (["sampdetox", "t1"], 20). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. sampdetox.t1=20")
    key, _, value = text.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
        if parsed == "None":  # DVC renders a null param as Python's ``None`` in a stage command (victims/dvc.yaml)
            parsed = None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {value!r}: {exc}") from None
    return path, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted overrides applied (the key must name a dict path)."""
    out = copy.deepcopy(raw)
    for text in overrides or []:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {'.'.join(path)}: {part!r} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def overlay_overrides(path: str | Path | None, *, skip_sections: tuple[str, ...] = ()) -> list[str]:
    """A params overlay (a YAML mapping of ``params.yaml`` sections holding only the keys it changes, e.g.
    ``params.demo.yaml``) as dotted ``key=value`` overrides. Nested mappings merge key by key; ``None`` /
    ``"none"`` / ``""`` is no overlay; the sections in ``skip_sections`` are left out. Keys are validated with the
    rest of the params when loaded (a typo is an error). A relative path is read from the working directory."""
    if path is None or str(path).lower() in ("", "none"):
        return []
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"params overlay not found: {p}")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if loaded is None:
        return []
    if not isinstance(loaded, dict) or not all(isinstance(v, dict) for v in loaded.values()):
        raise ConfigError(f"{p}: top level must be a mapping of params.yaml sections (e.g. 'dataelixir:')")

    def flatten(node: dict, prefix: str) -> list[str]:
        out = []
        for key, value in node.items():
            if isinstance(value, dict) and value:
                out += flatten(value, f"{prefix}{key}.")
            else:  # JSON is YAML: parse_override reads the value back exactly (strings, null, lists, {})
                plain = isinstance(value, str) and value and yaml.safe_load(value) == value
                out.append(f"{prefix}{key}={value if plain else json.dumps(value)}")
        return out

    return flatten({k: v for k, v in loaded.items() if k not in skip_sections}, "")


def load_params(
    path: str | Path | None = "params.yaml",
    overrides: list[str] | None = None,
    *,
    overlay: str | Path | None = None,
    overlay_skip: tuple[str, ...] = (),
    announce: bool = True,
) -> Params:
    """Load and validate ``params.yaml`` (or defaults when ``path`` is None) with dotted overrides.

    ``overlay``: a params overlay file (:func:`overlay_overrides`, its ``overlay_skip`` sections left out) applied
    after the file and before ``overrides``, so an explicit override wins over the overlay.
    ``announce``: print the params file read (absolute path) and the overrides to stderr, so a run's log says
    which hyperparameters it used; with ``path=None`` nothing is printed (the caller chose the defaults).
    """
    overrides = overlay_overrides(overlay, skip_sections=overlay_skip) + list(overrides or [])
    raw: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"params file not found: {p.resolve()}")
        origin = str(p)
        if announce:
            extra = f" with --set {' '.join(overrides)}" if overrides else ""
            print(f"detoxops: params from {p.resolve()}{extra}", file=sys.stderr)
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
        raw = loaded
    return Params.from_dict(apply_overrides(raw, overrides), origin=origin)
