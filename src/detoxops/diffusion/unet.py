"""Build, load and save diffusers ``UNet2DModel`` purifiers (safetensors only)."""

from __future__ import annotations

import json
import math
import os
import shutil
from importlib import resources
from pathlib import Path

import torch
from diffusers import UNet2DModel
from safetensors.torch import save_file

from detoxops.config import ScheduleConfig, UNetConfig
from detoxops.data.imageset import clean_stale_temps, temp_path_for
from detoxops.diffusion.levelmap import LEVEL_MAP_ENCODING, LEVEL_MAP_FILE, LevelMapPurifier
from detoxops.diffusion.purifier import Purifier
from detoxops.diffusion.schedule import NoiseSchedule
from detoxops.modelfiles import (
    ModelFileError,
    bounded_int,
    check_finite_state,
    check_parameter_budget,
    check_state_header,
    load_checked_state,
    read_json_config,
    safetensors_header,
)

__all__ = [
    "build_unet", "load_purifier", "save_purifier", "default_purifier", "purifier_folder", "SHIPPED_PURIFIERS",
    "ALL_SHIPPED_PURIFIERS",
    "count_params",
]

SCHEDULER_CONFIG = "scheduler_config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
# Shipped checkpoints under detoxops/assets/purifiers/<name>/, keyed by the image size they were trained at.
SHIPPED_PURIFIERS = {"digits-16": 16, "cifar10-32": 32}
# Shipped but never the size's default: chosen by name in ``diffusion.purifier`` (docs/diffusion.md): the level-map
# purifier, and cifar10-32-v2, cifar10-32 trained on to 21,750 steps: the better denoiser (+1.0-1.3 dB), but with
# SampDetox's levels, chosen with cifar10-32, it removes less of a trigger (measured), so it is not the size's default
# until they are chosen again with it. DataElixir's cpu_cifar10 profile names it (its settings were chosen with it:
# DataElixirConfig.PROFILE_PURIFIERS, detoxops.operations.dataelixir_purifier).
OPTIONAL_PURIFIERS = {"cifar10-32-levelmap": 32, "cifar10-32-v2": 32}
# Every shipped purifier, default or optional, by name: the image size it was trained at.
ALL_SHIPPED_PURIFIERS = {**SHIPPED_PURIFIERS, **OPTIONAL_PURIFIERS}


UNET_PRESETS = {
    # Ho et al. 2020's CIFAR-10 network, as google/ddpm-cifar10-32: 35,746,307 parameters.
    "ddpm-cifar10": {"block_out_channels": [128, 256, 256, 256], "layers_per_block": 2, "attention": True,
                     "dropout": 0.1},
}


def build_unet(cfg: UNetConfig) -> UNet2DModel:
    """A ``UNet2DModel`` from params: plain residual blocks, self-attention at the second level if asked.

    ``preset="ddpm-cifar10"`` (``block_out_channels=[128, 256, 256, 256]``, ``layers_per_block=2``,
    ``attention=True``, ``dropout=0.1``) is the 35.7M-parameter DDPM CIFAR-10 network (Ho et al.).
    """
    if cfg.preset is not None:
        cfg = cfg.model_copy(update=UNET_PRESETS[cfg.preset])
    if not isinstance(cfg.sample_size, int):
        raise ValueError(f"diffusion.unet.sample_size is {cfg.sample_size!r}: give the image side (train_purifier "
                         "and prepare_purifier take it from the training images)")
    chans = tuple(int(c) for c in cfg.block_out_channels)
    if not chans:
        raise ValueError("diffusion.unet.block_out_channels must not be empty")
    if cfg.sample_size % (2 ** (len(chans) - 1)):
        raise ValueError(
            f"diffusion.unet.sample_size {cfg.sample_size} is not divisible by 2^{len(chans) - 1} "
            f"(one halving per extra block in block_out_channels)"
        )
    down = ["DownBlock2D"] * len(chans)
    up = ["UpBlock2D"] * len(chans)
    if cfg.attention and len(chans) > 1:
        down[1] = "AttnDownBlock2D"
        up[-2] = "AttnUpBlock2D"
    groups = math.gcd(*chans) if len(chans) > 1 else chans[0]
    return UNet2DModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,
        block_out_channels=chans,
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=min(32, groups),
        dropout=cfg.dropout,
    )


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def save_purifier(purifier: Purifier, path: str | Path, *, fp16: bool = False) -> Path:
    """Write a diffusers folder (``config.json``, ``diffusion_pytorch_model.safetensors``,
    ``scheduler_config.json``) atomically. ``fp16`` halves the size for shipping; loading upcasts."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(dest.parent)  # what killed saves left behind
    tmp = temp_path_for(dest)
    unet = getattr(purifier.unet, "_orig_mod", purifier.unet)  # a torch.compile'd UNet saves its original
    try:
        unet.save_pretrained(tmp, safe_serialization=True)
        if fp16:  # same file, half-precision tensors (the caller's network is left as it is)
            state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in unet.state_dict().items()}
            save_file(state, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        (tmp / SCHEDULER_CONFIG).write_text(json.dumps(
            {**purifier.schedule.to_diffusers_config(),
             "prediction_type": getattr(purifier, "prediction_type", "epsilon")}, indent=1))
        if getattr(purifier, "accepts_level_map", False):  # the marker that makes load_purifier build one again
            (tmp / LEVEL_MAP_FILE).write_text(json.dumps(LEVEL_MAP_ENCODING, indent=1))
        for f in tmp.iterdir():
            f.chmod(0o644)
        if dest.is_dir():
            # Replace file by file (each os.replace is atomic) so that other content of the folder — the
            # resumable training state in ``checkpoint/``, a README — survives a re-save.
            for f in sorted(tmp.iterdir(), key=lambda f: f.name != WEIGHTS_NAME):
                os.replace(f, dest / f.name)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def load_purifier(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    schedule: NoiseSchedule | ScheduleConfig | None = None,
    precision: str = "auto",
) -> Purifier:
    """Load a diffusers ``UNet2DModel`` folder (local) or hub id (online only) as a float32 purifier whose forward
    pass runs in ``precision`` (``diffusion.precision``: :func:`detoxops.devices.bf16_inference`).

    The schedule comes from ``scheduler_config.json`` in the folder (or its ``scheduler/`` sub-folder, as in
    ``DDPMPipeline`` repos), else from ``schedule`` (default: linear 1e-4..0.02, T = 1000).
    Only safetensors weights are read; a folder with only pickled ``.bin`` weights is refused.
    """
    p = Path(path)
    if p.is_dir():
        unet_dir = p / "unet" if (p / "unet" / "config.json").is_file() else p
        if not (unet_dir / "config.json").is_file():
            raise FileNotFoundError(f"{p}: not a diffusers UNet2DModel folder (no config.json)")
        if not any(unet_dir.glob("*.safetensors")):
            raise ValueError(f"{unet_dir}: no .safetensors weights (pickled .bin weights are not loaded)")
        unet = _unet_from_folder(unet_dir)
        sched_file = next((f for f in (p / SCHEDULER_CONFIG, p / "scheduler" / SCHEDULER_CONFIG) if f.is_file()), None)
        sched = _schedule_from_file(sched_file) if sched_file else None
        prediction_type = _prediction_type(sched_file) if sched_file else "epsilon"
    elif "/" in str(path) and not p.exists() and not str(path).startswith((".", "/")):
        unet, sched, prediction_type = _load_from_hub(str(path))
    else:
        raise FileNotFoundError(f"purifier not found: {path}")
    if sched is None:
        if isinstance(schedule, NoiseSchedule):
            sched = schedule
        else:
            sched = NoiseSchedule.from_config(schedule or ScheduleConfig())
    if unet.dtype != torch.float32:  # fp16 hub / folder weights run in float32
        unet = unet.to(torch.float32)
    if p.is_dir() and (unet_dir / LEVEL_MAP_FILE).is_file():
        encoding = json.loads((unet_dir / LEVEL_MAP_FILE).read_text())
        if {k: encoding.get(k) for k in ("kind", "extra_channel", "timestep")} != {
                k: LEVEL_MAP_ENCODING[k] for k in ("kind", "extra_channel", "timestep")}:
            raise ValueError(f"{unet_dir / LEVEL_MAP_FILE}: unknown level-map encoding {encoding}")
        purifier = LevelMapPurifier(unet, sched, precision=precision, prediction_type=prediction_type).to(device)
    else:
        purifier = Purifier(unet, sched, precision=precision, prediction_type=prediction_type).to(device)
    # where it came from: files that belong to these weights (the patch repair's calibration) are found there
    purifier.source_dir = p.resolve() if p.is_dir() else None
    return purifier


def _prediction_type(path: Path) -> str:
    """What the network predicts, from ``scheduler_config.json`` (diffusers' ``prediction_type``; default ε)."""
    from detoxops.diffusion.purifier import PREDICTION_TYPES

    value = read_json_config(path, "scheduler config").get("prediction_type", "epsilon")
    if value not in PREDICTION_TYPES:
        raise ModelFileError(f"{path}: prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {value!r}")
    return value


def _schedule_from_file(path: Path) -> NoiseSchedule:
    """A purifier's ``scheduler_config.json``, bounded (:class:`ModelFileError`) before the tables are built."""
    cfg = read_json_config(path, "scheduler config")
    where = str(path)
    bounded_int(cfg, "num_train_timesteps", 2, 100_000, where, default=1000)
    betas = cfg.get("trained_betas")
    if betas is not None:
        if not isinstance(betas, list) or not 2 <= len(betas) <= 100_000:
            raise ModelFileError(f"{where}: trained_betas must be a list of 2 to 100000 numbers")
        values = [b for b in betas if isinstance(b, int | float) and not isinstance(b, bool)]
        if len(values) != len(betas) or not all(0.0 < float(b) < 1.0 for b in values):
            raise ModelFileError(f"{where}: every trained_betas value must be a number in (0, 1)")
    for key in ("beta_start", "beta_end"):
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not 0.0 < float(value) < 1.0):
            raise ModelFileError(f"{where}: {key} must be a number in (0, 1), got {value!r}")
    try:
        return NoiseSchedule.from_diffusers_config(cfg)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ModelFileError(f"{where}: {exc}") from None


def check_unet_config(cfg: dict, where: str) -> None:
    """Bounds on a diffusers ``UNet2DModel`` config.json, before anything is built (:class:`ModelFileError`)."""
    size = cfg.get("sample_size", 32)
    sizes = size if isinstance(size, list | tuple) else [size]
    if not 1 <= len(sizes) <= 2:
        raise ModelFileError(f"{where}: sample_size must be an integer or a pair, got {size!r}")
    for i, value in enumerate(sizes):
        bounded_int({"sample_size": value}, "sample_size", 4, 1024, where + (f" [{i}]" if len(sizes) > 1 else ""))
    for key, hi in (("in_channels", 8), ("out_channels", 8), ("layers_per_block", 8), ("norm_num_groups", 2048),
                    ("attention_head_dim", 2048), ("num_class_embeds", 100_000), ("time_embedding_dim", 8192)):
        bounded_int(cfg, key, 1, hi, where, default=None)
    chans = cfg.get("block_out_channels", [224, 448, 672, 896])  # diffusers' default
    if not isinstance(chans, list | tuple) or not 1 <= len(chans) <= 8:
        raise ModelFileError(f"{where}: block_out_channels must be a list of 1 to 8 integers, got {chans!r}")
    for i, c in enumerate(chans):
        bounded_int({f"block_out_channels[{i}]": c}, f"block_out_channels[{i}]", 1, 2048, where)
    for key in ("down_block_types", "up_block_types"):
        kinds = cfg.get(key)
        if kinds is not None and (not isinstance(kinds, list | tuple) or len(kinds) != len(chans)
                                  or not all(isinstance(k, str) for k in kinds)):
            raise ModelFileError(f"{where}: {key} must list one block type per block_out_channels entry")


def _unet_from_folder(folder: Path) -> UNet2DModel:
    """Build from ``config.json`` and read every ``*.safetensors`` shard as float32.

    Built with ``from_config`` exactly as :func:`build_unet` builds, so a saved network and its reload run
    the same modules and give bit-identical outputs (``from_pretrained`` may pick other attention kernels).
    Untrusted folders are checked before anything is allocated (:mod:`detoxops.modelfiles`): config bounds, the
    network's size on the meta device, every shard's header against it, then finiteness.
    """
    where = str(folder / "config.json")
    cfg = read_json_config(folder / "config.json", "UNet config")
    check_unet_config(cfg, where)
    try:
        with torch.device("meta"):
            skeleton = UNet2DModel.from_config(cfg)
    except ModelFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - diffusers raises many kinds on inconsistent configs
        raise ModelFileError(f"{where}: not a buildable UNet2DModel config ({type(exc).__name__}: {exc})") from None
    check_parameter_budget(skeleton, where)
    expected = skeleton.state_dict()
    shards = sorted(folder.glob("*.safetensors"))
    headers = {shard: safetensors_header(shard) for shard in shards}
    names = {name for header in headers.values() for name in header}
    if names != set(expected):
        # Older diffusers checkpoints (e.g. google/ddpm-cifar10-32) use renamed attention keys, which
        # from_pretrained converts; still safetensors only, and still checked for finiteness.
        renamed_only = all("attention" in n for n in names ^ set(expected))
        if renamed_only:
            try:
                unet = UNet2DModel.from_pretrained(folder, use_safetensors=True)
            except Exception:  # noqa: BLE001 - report the mismatch below, which names the keys
                unet = None
            if unet is not None:
                check_finite_state(unet.state_dict(), folder)
                return unet
        missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
        raise ModelFileError(f"{folder}: weights do not match config.json (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        check_state_header(headers[shard], expected, shard, allow_missing=True)
        state.update(load_checked_state(shard, expected, allow_missing=True))
    unet = UNet2DModel.from_config(cfg)
    unet.load_state_dict({k: v.float() for k, v in state.items()})
    return unet


def _load_from_hub(repo_id: str) -> tuple[UNet2DModel, NoiseSchedule | None, str]:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise RuntimeError(
            f"purifier {repo_id!r} is neither a local folder nor loadable: HF_HUB_OFFLINE is set, so the "
            "Hugging Face hub is not contacted. Download it elsewhere and pass the local folder instead."
        )
    try:
        unet = UNet2DModel.from_pretrained(repo_id, use_safetensors=True)
    except Exception as exc:
        try:
            unet = UNet2DModel.from_pretrained(repo_id, subfolder="unet", use_safetensors=True)
        except Exception:
            raise RuntimeError(
                f"could not load purifier {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
                "Offline? Download it elsewhere and pass the local folder instead."
            ) from None
    try:
        from diffusers import DDPMScheduler

        sched_cfg = DDPMScheduler.load_config(repo_id, subfolder="scheduler")
        schedule = NoiseSchedule.from_diffusers_config(sched_cfg)
    except Exception:
        return unet, None, "epsilon"
    from detoxops.diffusion.purifier import PREDICTION_TYPES

    prediction_type = sched_cfg.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ModelFileError(f"{repo_id}: scheduler prediction_type {prediction_type!r} is not one of "
                             f"{', '.join(PREDICTION_TYPES)}")
    return unet, schedule, prediction_type


def shipped_purifier_dir(name: str) -> Path:
    return Path(str(resources.files("detoxops") / "assets" / "purifiers" / name))


def shipped_name(spec: str | Path | None) -> str | None:
    """The shipped purifier (a default or an optional one) that ``spec`` names — ``cifar10-32-v2`` or
    ``shipped:cifar10-32-v2`` — or ``None`` when it names none or is an existing folder (a folder wins)."""
    name = str(spec or "").removeprefix("shipped:")
    if name in ALL_SHIPPED_PURIFIERS and not Path(str(spec)).is_dir():
        return name
    return None


DATASET_IMAGE_SIZES = {"digits": 16, "cifar10": 32, "cifar-10": 32, "gtsrb": 32}


def purifier_folder(configured: str | Path | None, image_size: int) -> tuple[Path | None, str]:
    """Which purifier a run uses, as every flow and pipeline stage decides it: ``(folder, origin)``.

    ``diffusion.purifier`` when set (origin ``configured``; a missing folder is an error; the name of a shipped
    purifier such as ``cifar10-32-levelmap`` selects it, origin ``shipped:<name>``), else the purifier shipped for
    ``image_size`` (``shipped:<name>``), else ``(None, "none")``: the caller trains one.
    """
    name = shipped_name(configured)
    if name is not None:
        size = ALL_SHIPPED_PURIFIERS[name]
        folder = shipped_purifier_dir(name)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"diffusion.purifier: the shipped purifier {name!r} is not installed ({folder})")
        if size != int(image_size):
            raise ValueError(f"diffusion.purifier: {name!r} is for {size}x{size} images, the data are "
                             f"{image_size}x{image_size}")
        return folder, f"shipped:{name}"
    if configured:
        folder = Path(configured)
        if not folder.is_dir():
            raise FileNotFoundError(f"diffusion.purifier: {folder} is not a folder")
        return folder.resolve(), "configured"
    for name, size in SHIPPED_PURIFIERS.items():
        folder = shipped_purifier_dir(name)
        if size == int(image_size) and (folder / "config.json").is_file():
            return folder, f"shipped:{name}"
    return None, "none"


def default_purifier(data: int | str, *, device: str | torch.device = "cpu") -> Purifier:
    """The purifier shipped in the package for a dataset name (``digits``, ``cifar10``) or an image size
    (16: digits, 32: CIFAR-10-like data)."""
    if isinstance(data, str) and not data.isdigit():
        key = data.lower()
        if key not in DATASET_IMAGE_SIZES:
            raise ValueError(
                f"no shipped purifier for dataset {data!r}: known names {sorted(DATASET_IMAGE_SIZES)}, "
                "or pass the image size"
            )
        image_size = DATASET_IMAGE_SIZES[key]
    else:
        image_size = int(data)
    folder, _ = purifier_folder(None, image_size)
    if folder is not None:
        return load_purifier(folder, device=device)
    available = [n for n in SHIPPED_PURIFIERS if (shipped_purifier_dir(n) / "config.json").is_file()]
    raise FileNotFoundError(
        f"no shipped purifier for {image_size}x{image_size} images (shipped: {available or 'none'}); "
        "train one with `detoxops diffusion train` and set diffusion.purifier"
    )
