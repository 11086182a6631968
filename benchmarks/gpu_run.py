"""One call on a lent GPU: the full-scale purifier, the PreAct-ResNet18 victims, SampDetox on the held-out split,
DataElixir on one attack and the GPU throughput, all inside a time budget, written to ``$OUT`` as it goes.

Run on the GPU machine through ``benchmarks/gpu_run.sh`` (installs the bundle's wheels first; docs/gpu.md has the
exact ``run`` call). Here, end to end at toy sizes on the CPU (what tests/benchmarks/test_gpu_run.py runs):

    .venv/bin/python benchmarks/gpu_run.py --smoke --data gpu_bundle/cifar10.npz --out /tmp/gpu-smoke

Stages, in order (time boxes are the plan for ``--budget-s 520`` on one H100, not measurements; every stage checks
the clock and the whole run ends by the budget, a watchdog thread at budget + 30 s writes the JSON and exits):

====================  =====================================================================================
setup + data          device, bundle manifest, code hash; decode the bundle's CIFAR-10 (16 processes), check it
                      against the manifest's sha256 (what ``load_source`` decoded when the bundle was built)
parallel phase        three processes share the GPU until one deadline (default: what is left after the later
(≈ 290 s)             stages' boxes): this one trains the purifier (``ddpm-cifar10``, 35.7M, bf16 autocast,
                      channels_last, EMA, levels ≤ 300, batch 128) for the time box; a child trains the victims
                      (PreAct-ResNet18, BackdoorBench recipe, 10 epochs) in the stated order clean, BadNets,
                      Blended, WaNet, skipping one its predecessor's time says will not fit; a child trains the
                      shipped preset's 1.06M purifier on the GPU (the candidate for the shipped default)
pack + denoising      purifier to its transport precision and back: every later number uses exactly the weights
(≈ 15 s)              that come back; DDIM-restoration PSNR of the new, the small and the shipped purifier
throughput (≤ 60 s)   UNet passes/s; SampDetox faithful / robust x DDIM / DDPM images/s at batch 256; DataElixir
                      candidate construction images/s (DDPM as the paper, and DDIM stride 10); classifier images/s
sampdetox (≤ 90 s)    no defense, faithful SampDetox (Algorithm 1, DDPM) and the default (robust) on the
                      held-out half of the test split; the image count is sized from the measured rates, and
                      work is interleaved so a run cut short still has every cell, on fewer images
dataelixir (≤ 60 s)   DataElixir (paper settings) on a class-stratified subset of the BadNets-poisoned training
                      set sized from the measured rate: TPR / FPR, target label, restored labels
compile (optional)    ``--compile``: torch.compile'd UNet passes/s and SampDetox-DDIM images/s, if time is left
====================  =====================================================================================

Outputs (at most 8 files, ≤ 16 MiB each, ≤ 64 MiB together): ``results.json`` (every number, the device, the
plan, a timeline), ``run.log``, and the artifacts in priority order, each fp16 where it fits and int8 (per output
channel) where only that fits: the purifier (the 35.7M one in fp16 is 68 MiB, over the whole limit, so it comes
back as int8 in three parts), the 1.06M purifier, then the victims (BadNets first: DataElixir's). A file is
written as soon as it exists; ``results.json`` after every stage. ``benchmarks/gpu_import.py`` turns them into
runs/, results tables and (gated on the measured PSNR) the shipped default.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

RUN_FORMAT = "detoxops-gpu-run/1"
TRANSPORT_FORMAT = "detoxops-transport/1"
RESULTS = "results.json"
LOG = "run.log"
MIB = 1024 * 1024
OUT_MAX_FILES = 8
OUT_FILE_LIMIT = 16 * MIB
OUT_TOTAL_LIMIT = 64 * MIB
INT8, SCALE = "@int8", "@scale"

log = logging.getLogger("gpu_run")


# ------------------------------------------------------------------------------------------------ plan
@dataclass
class Plan:
    """Every knob of a run; ``Plan()`` is the full GPU run, :meth:`smoke` the CPU toy run."""

    smoke: bool = False
    seed: int = 0
    budget_s: float = 520.0
    watchdog_grace_s: float = 30.0
    parallel: bool = True
    cpu_threads: int | None = None  # torch threads per process (None: the cores, shared among the processes)
    data_workers: int = 16
    train_per_class: int | None = None
    test_per_class: int | None = None
    # the purifier for the tables
    purifier_preset: str | None = "ddpm-cifar10"
    purifier_unet: dict = field(default_factory=dict)  # UNetConfig fields when purifier_preset is None
    purifier_box_max_s: float = 330.0
    purifier_steps: int = 1_000_000  # a cap; the time box ends training
    purifier_batch: int = 128
    purifier_lr: float = 2e-4
    purifier_ema: float = 0.999
    purifier_max_t: int = 300
    compile_train: bool = False
    # the shipped preset (params.yaml's diffusion.unet at 32 px), trained on the GPU as a candidate default
    small_unet: dict = field(default_factory=lambda: {"block_out_channels": [32, 64, 64], "layers_per_block": 1,
                                                      "attention": False})
    small_steps: int = 1_000_000
    small_batch: int = 128
    small_max_t: int = 600  # the shipped cifar10-32 was trained with max_t 600
    small_box_s: float = 150.0
    # victims
    victim_arch: str = "preact_resnet18"
    victim_width: int | None = None
    victim_epochs: int = 10
    victim_batch: int = 128
    attacks: list[str] = field(default_factory=lambda: ["clean", "badnets", "blended", "wanet"])
    target: int = 0
    poison_ratio: float = 0.1
    # evaluation
    denoise_n: int = 512
    throughput_batch: int = 256
    throughput_box_s: float = 60.0
    sampdetox_box_s: float = 90.0
    sampdetox_profiles: list[str] = field(default_factory=lambda: ["faithful", "robust"])
    sampdetox_overrides: dict = field(default_factory=dict)  # SampDetoxConfig fields over every profile (smoke)
    sampdetox_batch: int = 256
    sampdetox_min_clean: int = 100
    sampdetox_max_clean: int = 2000
    sampdetox_triggered_ratio: float = 0.5  # triggered images per attack, per clean image
    elixir_attack: str = "badnets"
    elixir_box_s: float = 60.0
    elixir_min_per_class: int = 10
    elixir_max_per_class: int = 500
    elixir: dict = field(default_factory=dict)  # DataElixirConfig overrides on profile paper (none: the paper's settings)
    compile: bool = False
    compile_box_s: float = 150.0
    final_reserve_s: float = 8.0
    # outputs
    part_bytes: int = 16_000_000
    artifact_budget_bytes: int = 64_000_000
    max_artifact_files: int = OUT_MAX_FILES - 2  # results.json and run.log

    @classmethod
    def smoke_plan(cls) -> Plan:
        """Toy sizes: every stage runs, on tiny nets and a few images. The boxes are generous (the work, not the
        clock, bounds it) so a slow CI machine gets the same complete result, only later."""
        return cls(
            smoke=True, budget_s=1500.0, watchdog_grace_s=20.0, cpu_threads=1, data_workers=2, train_per_class=20,
            test_per_class=10, purifier_preset=None,
            purifier_unet={"block_out_channels": [8, 16], "layers_per_block": 1, "attention": True},
            purifier_steps=8, purifier_batch=8, purifier_box_max_s=300.0,
            small_unet={"block_out_channels": [8, 16], "layers_per_block": 1, "attention": False},
            small_steps=4, small_batch=8, small_box_s=300.0,
            victim_arch="small_cnn", victim_width=4, victim_epochs=1, victim_batch=32,
            sampdetox_overrides={"t1": 4, "t2": 12, "t_loc": 8, "t_mask": 12, "ddim_stride": 4},
            denoise_n=8, throughput_batch=8, throughput_box_s=300.0, sampdetox_box_s=300.0, sampdetox_batch=32,
            sampdetox_min_clean=10, sampdetox_max_clean=10, elixir_box_s=300.0, elixir_min_per_class=3,
            elixir_max_per_class=3,
            elixir={"T": 20, "rounds": 2, "keep_last": 3, "relabel_epochs": 1, "finetune_epochs": 1,
                    "shard_size": 32},
            compile_box_s=0.0, final_reserve_s=2.0,
            # sized from the smoke nets' estimates (purifier 147 kB, small 135 kB, victim 23 / 19 kB in fp16 / int8)
            # so that the plan splits files, falls back to int8 for one victim and leaves two behind
            part_bytes=80_000, artifact_budget_bytes=326_000,
        )

    def post_parallel_s(self) -> float:
        """Time the stages after the parallel phase are planned to take (their boxes plus packing)."""
        tail = 20.0 + self.throughput_box_s + self.sampdetox_box_s + self.elixir_box_s + self.final_reserve_s
        return tail + (self.compile_box_s if self.compile else 0.0)


# ---------------------------------------------------------------------------------------------- clock
class Clock:
    def __init__(self, budget_s: float, start: float | None = None) -> None:
        self.t0 = time.time() if start is None else start
        self.deadline = self.t0 + budget_s

    def elapsed(self) -> float:
        return time.time() - self.t0

    def remaining(self) -> float:
        return self.deadline - time.time()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------- logging
class _CappedFileHandler(logging.FileHandler):
    """Appends to ``run.log`` (every process of the run does) and stops at ``cap`` bytes."""

    def __init__(self, path: Path, cap: int = 1_000_000) -> None:
        super().__init__(path, mode="a", encoding="utf-8")
        self.cap = cap

    def emit(self, record: logging.LogRecord) -> None:
        try:
            size = os.path.getsize(self.baseFilename)
        except OSError:
            size = 0
        if size < self.cap:
            super().emit(record)
            self.flush()


def setup_logging(out: Path, tag: str) -> None:
    fmt = logging.Formatter(f"%(asctime)s {tag} %(levelname)s %(message)s", "%H:%M:%S")
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in (logging.StreamHandler(sys.stdout), _CappedFileHandler(out / LOG)):
        handler.setFormatter(fmt)
        log.addHandler(handler)


# ------------------------------------------------------------------------------------------ results
def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def write_json(path: Path, data: dict) -> None:
    """Atomic: a temp file beside it, then rename (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_jsonable, allow_nan=True))
    os.replace(tmp, path)


class Results:
    def __init__(self, path: Path, data: dict) -> None:
        self.path, self.data, self.lock = path, data, threading.RLock()

    def write(self) -> None:
        with self.lock:
            write_json(self.path, self.data)


# ------------------------------------------------------------------------------------------ transport
def pack_state(state: dict[str, torch.Tensor], precision: str) -> dict[str, torch.Tensor]:
    """Weights for transport: tensors of 2+ dims in fp16, or int8 with one fp32 scale per output channel
    (symmetric, max-abs); 1-D float tensors (biases, norms, BN statistics) stay fp32; integer tensors as they are."""
    if precision not in ("fp16", "int8"):
        raise ValueError(f"unknown transport precision {precision!r} (fp16 or int8)")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        v = value.detach().to("cpu")
        if not v.is_floating_point():
            out[key] = v.contiguous()
        elif v.ndim < 2:
            out[key] = v.float().contiguous()
        elif precision == "fp16":
            out[key] = v.to(torch.float16).contiguous()
        else:
            rows = v.float().reshape(v.shape[0], -1)
            scale = rows.abs().amax(1).clamp_min(1e-12) / 127.0
            q = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8)
            out[key + INT8] = q.reshape(v.shape).contiguous()
            out[key + SCALE] = scale.contiguous()
    return out


def unpack_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_state`, float tensors as float32."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key.endswith(SCALE):
            continue
        if key.endswith(INT8):
            name = key[: -len(INT8)]
            if name + SCALE not in tensors:
                raise ValueError(f"transport file: {key} has no {name + SCALE}")
            scale = tensors[name + SCALE].float()
            out[name] = (value.float().reshape(value.shape[0], -1) * scale[:, None]).reshape(value.shape)
        else:
            out[key] = value.float() if value.is_floating_point() else value
    return out


def transport_bytes(state: dict[str, torch.Tensor], precision: str, metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    meta = {"format": TRANSPORT_FORMAT, "precision": precision, **metadata}
    return save(pack_state(state, precision), metadata=meta)


def estimate_bytes(shapes: dict[str, tuple[tuple[int, ...], bool]], precision: str, meta_len: int = 30_000) -> int:
    """Size of a transport file from tensor shapes ({name: (shape, is_float)}) without building it."""
    total = meta_len + 1024
    for shape, is_float in shapes.values():
        n = math.prod(shape) if shape else 1
        total += 160  # header entry
        if not is_float:
            total += 8 * n
        elif len(shape) < 2:
            total += 4 * n
        elif precision == "fp16":
            total += 2 * n
        else:
            total += n + 4 * shape[0] + 160
    return total


def write_parts(out: Path, name: str, blob: bytes, part_bytes: int) -> list[dict]:
    """``<name>.safetensors`` when it fits one file, else ``<name>.safetensors.part<i>``; each written atomically."""
    n_parts = max(1, math.ceil(len(blob) / part_bytes))
    rows = []
    for i in range(n_parts):
        chunk = blob[i * part_bytes: (i + 1) * part_bytes]
        fname = f"{name}.safetensors" if n_parts == 1 else f"{name}.safetensors.part{i}"
        tmp = out / f".{fname}.tmp"
        tmp.write_bytes(chunk)
        os.replace(tmp, out / fname)
        rows.append({"file": fname, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    return rows


def read_parts(folder: Path, artifact: dict) -> bytes:
    """Join and check an artifact's parts (sizes and sha256 of each, and of the whole)."""
    chunks = []
    for part in artifact["parts"]:
        path = Path(folder) / part["file"]
        if not path.is_file():
            raise FileNotFoundError(f"artifact {artifact['name']}: part {path} is missing")
        data = path.read_bytes()
        if len(data) != part["bytes"] or hashlib.sha256(data).hexdigest() != part["sha256"]:
            raise ValueError(f"artifact {artifact['name']}: part {path} does not match results.json "
                             f"({len(data)} bytes, expected {part['bytes']}; or its sha256 differs)")
        chunks.append(data)
    blob = b"".join(chunks)
    if hashlib.sha256(blob).hexdigest() != artifact["sha256"]:
        raise ValueError(f"artifact {artifact['name']}: joined parts have the wrong sha256")
    return blob


def load_transport(blob: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(float32 state dict, metadata) of a transport file; safetensors only, nothing unpickled."""
    from safetensors import safe_open
    from safetensors.torch import load

    tensors = load(blob)
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as tmp:  # metadata is read from a file
        tmp.write(blob)
        tmp.flush()
        with safe_open(tmp.name, framework="pt") as fh:
            meta = fh.metadata() or {}
    if meta.get("format") != TRANSPORT_FORMAT:
        raise ValueError(f"not a {TRANSPORT_FORMAT} file (format {meta.get('format')!r})")
    return unpack_state(tensors), meta


def allocate_artifacts(items: list[dict], budget: int, part_bytes: int, max_files: int) -> dict[str, dict]:
    """Greedy, in priority order: fp16 if it fits the bytes and files left, else int8, else not returned.
    ``items``: ``{"name", "fp16_bytes", "int8_bytes"}``."""
    left_bytes, left_files, plan = budget, max_files, {}
    for item in items:
        choice = {"precision": None, "reserved_bytes": 0, "files": 0}
        for precision in ("fp16", "int8"):
            size = int(item[f"{precision}_bytes"])
            files = max(1, math.ceil(size / part_bytes))
            if size <= left_bytes and files <= left_files:
                choice = {"precision": precision, "reserved_bytes": size, "files": files}
                left_bytes -= size
                left_files -= files
                break
        plan[item["name"]] = choice
    return plan


def _shapes(module: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], bool]]:
    return {k: (tuple(v.shape), v.is_floating_point()) for k, v in module.state_dict().items()}


def fingerprint_purifier(unet_config: dict, state: dict[str, torch.Tensor], seed: int = 1234) -> dict:
    """ε̂ of a fixed seeded input, computed on the CPU in float32: the importer recomputes it from the files."""
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_config(unet_config)
    unet.load_state_dict(state)
    unet.eval()
    size, chans = int(unet.config.sample_size), int(unet.config.in_channels)
    x = torch.randn(4, chans, size, size, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)
    levels = torch.tensor([1, 20, 120, 300])
    with torch.no_grad():
        eps = unet(x, levels - 1).sample
    return {"seed": seed, "levels": levels.tolist(), "sum": float(eps.sum()), "abs_sum": float(eps.abs().sum()),
            "head": eps.flatten()[:8].tolist()}


def architecture_options(spec: dict) -> dict:
    """The width options of a classifier spec (``width``: small_cnn, ``widths``: fast_cnn) for build_classifier."""
    return {k: spec[k] for k in ("width", "widths") if spec.get(k) is not None}


def fingerprint_classifier(spec: dict, state: dict[str, torch.Tensor], seed: int = 1234) -> dict:
    from detoxops.models import build_classifier

    model = build_classifier(spec["arch"], spec["num_classes"], spec.get("in_channels", 3),
                             spec.get("image_size", 32), **architecture_options(spec))
    model.load_state_dict(state)
    model.eval()
    x = torch.rand(4, spec.get("in_channels", 3), spec.get("image_size", 32), spec.get("image_size", 32),
                   generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits = model(x)
    return {"seed": seed, "sum": float(logits.sum()), "abs_sum": float(logits.abs().sum()),
            "head": logits.flatten()[:8].tolist()}


def fingerprints_match(a: dict, b: dict, rtol: float = 1e-3) -> bool:
    scale = max(abs(a["abs_sum"]), 1e-6)
    return (abs(a["abs_sum"] - b["abs_sum"]) <= rtol * scale and abs(a["sum"] - b["sum"]) <= rtol * scale
            and all(abs(x - y) <= rtol * max(1.0, abs(x)) for x, y in zip(a["head"], b["head"], strict=True)))


def emit_artifact(out: Path, name: str, kind: str, state: dict[str, torch.Tensor], precision: str | None,
                  reserved: int, part_bytes: int, config: dict, extra_meta: dict[str, str] | None = None) -> dict:
    """Pack, write the parts to ``out`` and read them back: returns the artifact row (with the float32 state the
    row describes, under ``_state``, for the caller to evaluate)."""
    row: dict[str, Any] = {"name": name, "kind": kind, "precision": precision}
    if precision is None:
        row.update(returned=False, reason="no room left in the 8 files / 64 MiB that come back")
        return row
    meta = {"kind": kind, "name": name, "config": json.dumps(config), **(extra_meta or {})}
    blob = transport_bytes(state, precision, meta)
    if len(blob) > reserved and precision == "fp16":  # the estimate was short: int8 is half the size
        precision = "int8"
        blob = transport_bytes(state, precision, {**meta})
    if len(blob) > reserved:
        row.update(precision=None, returned=False,
                   reason=f"{len(blob)} bytes, over the {reserved} reserved for it")
        return row
    row["parts"] = write_parts(out, name, blob, part_bytes)
    row.update(precision=precision, returned=True, bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    back, _ = load_transport(blob)  # what the importer will get
    row["_state"] = back
    return row


# -------------------------------------------------------------------------------------------- helpers
def device_info() -> dict:
    info: dict[str, Any] = {
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:  # reported, and the purifier stages fail with the import error
        info["diffusers"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device="cuda", name=torch.cuda.get_device_name(0), capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                    bf16=torch.cuda.is_bf16_supported())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
            info["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["nvidia_smi"] = None
    else:
        cpu = "unknown"
        try:
            cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                        if ln.startswith("model name")), cpu)
        except OSError:
            pass
        info.update(device="cpu", name=cpu)
    return info


def code_sha256() -> str:
    """sha256 over the core package's and this script's source: the code version, with or without git."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "src" / "detoxops").rglob("*.py")) + [Path(__file__).resolve()]:
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _clamp_count(value: float, low: int, high: int, quantum: int = 1) -> int:
    n = int(min(max(value, low), high))
    return max(quantum, n - n % quantum)


def _timed(fn, reps: int = 1) -> float:
    _sync()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync()
    return (time.perf_counter() - start) / reps


# ------------------------------------------------------------------------------------------- context
@dataclass
class Context:
    plan: Plan
    out: Path
    work: Path
    clock: Clock
    results: Results
    train: Any = None
    test: Any = None
    allocation: dict = field(default_factory=dict)
    purifier: Any = None
    rates: dict = field(default_factory=dict)
    children: list = field(default_factory=list)

    def victim(self, name: str):
        """The victim as evaluated (its returned weights where it came back), on the device."""
        from detoxops.models import load_classifier

        folder = self.work / "victims" / name
        if not (folder / "classifier.json").is_file():
            return None
        model = load_classifier(folder, device=_device())
        if _device().type == "cuda":
            model.to(memory_format=torch.channels_last)
        return model

    def triggered(self, name: str):
        from detoxops.data import ImageSet

        folder = self.work / "triggered" / name
        return ImageSet.load(folder) if folder.is_dir() else None


def run_stage(ctx: Context, name: str, fn, *, min_s: float = 0.0) -> Any:
    entry: dict[str, Any] = {"stage": name, "start_s": round(ctx.clock.elapsed(), 1)}
    ctx.results.data["timeline"].append(entry)
    if ctx.clock.remaining() < min_s:
        entry.update(status="skipped", reason=f"{ctx.clock.remaining():.0f} s left, the stage needs {min_s:.0f} s")
        log.warning("stage %s skipped: %s", name, entry["reason"])
        ctx.results.write()
        return None
    log.info("stage %s: start (%.0f s left)", name, ctx.clock.remaining())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    value = None
    try:
        value = fn()
        entry["status"] = "done"
    except Exception as exc:  # noqa: BLE001 - one failing stage must not lose the others' numbers
        entry.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-3000:])
        log.error("stage %s failed: %s\n%s", name, entry["error"], entry["traceback"])
    entry["seconds"] = round(time.time() - start, 2)
    if torch.cuda.is_available():
        entry["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    log.info("stage %s: %s in %.1f s", name, entry["status"], entry["seconds"])
    ctx.results.write()
    return value


# --------------------------------------------------------------------------------------------- stages
def load_data(ctx: Context, data_file: Path, manifest: dict | None) -> dict:
    from detoxops.data import stratified_subset
    from gpu_bundle import decode_data_file

    expected = (manifest or {}).get("data", {}).get("splits")
    t0 = time.time()
    splits = decode_data_file(data_file, workers=ctx.plan.data_workers, expected=expected)
    decode_s = time.time() - t0
    train, test = splits["train"], splits["test"]
    if ctx.plan.train_per_class:
        train = stratified_subset(train, ctx.plan.train_per_class, ctx.plan.seed)
    if ctx.plan.test_per_class:
        test = stratified_subset(test, ctx.plan.test_per_class, ctx.plan.seed)
    train.save(ctx.work / "data" / "train", overwrite=True)
    test.save(ctx.work / "data" / "test", overwrite=True)
    ctx.train, ctx.test = train, test
    return {"file": str(data_file), "decode_s": round(decode_s, 2), "verified_against_manifest": expected is not None,
            "train": len(train), "test": len(test), "class_names": train.class_names}


def purifier_config(plan: Plan, small: bool):
    from detoxops.config import DiffusionConfig, DiffusionTrainConfig, UNetConfig

    if small:
        unet = UNetConfig(sample_size=32, **plan.small_unet)
        train = DiffusionTrainConfig(steps=plan.small_steps, batch_size=plan.small_batch, max_t=plan.small_max_t,
                                     checkpoint_every=plan.small_steps, seed=plan.seed)
    else:
        unet = (UNetConfig(preset=plan.purifier_preset, sample_size=32) if plan.purifier_preset
                else UNetConfig(sample_size=32, **plan.purifier_unet))
        train = DiffusionTrainConfig(steps=plan.purifier_steps, batch_size=plan.purifier_batch, lr=plan.purifier_lr,
                                     ema_decay=plan.purifier_ema, max_t=plan.purifier_max_t,
                                     checkpoint_every=plan.purifier_steps, seed=plan.seed, compile=plan.compile_train)
    return DiffusionConfig(unet=unet, train=train)


def _build_shapes_unet(cfg) -> tuple[dict, int, dict]:
    from detoxops.diffusion import build_unet

    try:
        with torch.device("meta"):
            unet = build_unet(cfg.unet)
    except Exception:  # noqa: BLE001 - a module that cannot be built on the meta device is built for real
        unet = build_unet(cfg.unet)
    return _shapes(unet), sum(p.numel() for p in unet.parameters()), dict(unet.config)


def _build_shapes_classifier(plan: Plan) -> dict:
    from detoxops.models import build_classifier

    try:
        with torch.device("meta"):
            model = build_classifier(plan.victim_arch, 10, 3, 32, seed=plan.seed, width=plan.victim_width)
    except Exception:  # noqa: BLE001
        model = build_classifier(plan.victim_arch, 10, 3, 32, seed=plan.seed, width=plan.victim_width)
    return _shapes(model)


def plan_outputs(ctx: Context) -> dict:
    """What comes back, decided before anything is trained: the artifacts' sizes follow from their shapes."""
    plan = ctx.plan
    items = []
    for key, small in (("purifier", False), ("purifier_small", True)):
        try:
            shapes, n_params, _ = _build_shapes_unet(purifier_config(plan, small))
        except Exception as exc:  # noqa: BLE001 - no UNet (diffusers broken?): the victims still train
            log.error("cannot build the %s UNet (%s: %s): it gets no output room", key, type(exc).__name__, exc)
            continue
        items.append({"name": key, "params": n_params, "fp16_bytes": estimate_bytes(shapes, "fp16"),
                      "int8_bytes": estimate_bytes(shapes, "int8")})
    victim_shapes = _build_shapes_classifier(plan)
    order = [plan.elixir_attack] + [a for a in plan.attacks if a != plan.elixir_attack]
    for attack in order:
        if attack in plan.attacks:
            items.append({"name": f"victim-{attack}", "params": sum(math.prod(s) for s, f in victim_shapes.values()),
                          "fp16_bytes": estimate_bytes(victim_shapes, "fp16", 4_000),
                          "int8_bytes": estimate_bytes(victim_shapes, "int8", 4_000)})
    ctx.allocation = allocate_artifacts(items, plan.artifact_budget_bytes, plan.part_bytes, plan.max_artifact_files)
    return {"items": items, "allocation": ctx.allocation, "budget_bytes": plan.artifact_budget_bytes,
            "part_bytes": plan.part_bytes}


def train_big_purifier(ctx: Context, box_s: float) -> dict:
    from detoxops.diffusion import Purifier, count_params, train_purifier

    plan = ctx.plan
    cfg = purifier_config(plan, small=False)
    t0 = time.time()
    purifier, history = train_purifier(ctx.train.images, cfg, ctx.work / "purifier", progress=False,
                                       time_budget_s=box_s)
    wall = time.time() - t0
    steps = int(history["step"])
    info = {"preset": plan.purifier_preset, "unet": cfg.unet.model_dump(), "params": count_params(purifier.unet),
            "train": cfg.train.model_dump(), "steps": steps, "images_seen": steps * plan.purifier_batch,
            "train_seconds": round(float(history["seconds"]), 1), "wall_seconds": round(wall, 1),
            "images_per_s": round(steps * plan.purifier_batch / max(float(history["seconds"]), 1e-9), 1),
            "loss": history["loss"][-20:], "time_box_s": round(box_s, 1),
            "concurrent_with": ["victims", "purifier_small"] if plan.parallel else []}
    # pack to the transport precision and evaluate exactly those weights from here on
    unet = getattr(purifier.unet, "_orig_mod", purifier.unet)
    state = {k: v.detach().cpu() for k, v in unet.state_dict().items()}
    info["psnr_before_transport"] = _oneshot_psnr(purifier, ctx)
    alloc = ctx.allocation.get("purifier", {"precision": None, "reserved_bytes": 0})
    row = emit_artifact(ctx.out, "purifier", "purifier", state, alloc["precision"], alloc["reserved_bytes"],
                        plan.part_bytes, dict(unet.config),
                        {"scheduler": json.dumps(purifier.schedule.to_diffusers_config())})
    back = row.pop("_state", state)
    unet.load_state_dict(back)
    row["fingerprint"] = fingerprint_purifier(dict(unet.config), back)
    ctx.purifier = Purifier(unet, purifier.schedule).to(_device())
    info["psnr_after_transport"] = _oneshot_psnr(ctx.purifier, ctx)
    info["transport"] = row["precision"]
    ctx.results.data["artifacts"].append(row)
    return info


def _denoise_images(ctx: Context) -> np.ndarray:
    """``denoise_n`` test images, the same number from every class (seeded): what every purifier is scored on."""
    from detoxops.data import stratified_subset_indices

    per_class = max(1, ctx.plan.denoise_n // ctx.test.num_classes)
    return np.asarray(ctx.test.images)[stratified_subset_indices(ctx.test.labels, per_class, ctx.plan.seed)]


def _oneshot_psnr(purifier, ctx: Context) -> dict:
    """One-pass x̂0 PSNR at levels 20 / 120 / 300: cheap, to compare weights before and after transport."""
    from detoxops.diffusion import evaluate_denoising

    res = evaluate_denoising(purifier, _denoise_images(ctx), (20, 120, 300), batch_size=256, seed=ctx.plan.seed,
                             restore=False)
    return {str(t): round(v["psnr_x0_oneshot"], 3) for t, v in res.items()}


def denoising_table(ctx: Context) -> dict:
    """DDIM (stride 20) restoration PSNR of every purifier on the same held-out images and noise: the new one,
    the GPU-trained shipped preset, and the shipped default (the import's ship gate compares the last two)."""
    from diffusers import UNet2DModel

    from detoxops.diffusion import NoiseSchedule, Purifier, default_purifier, evaluate_denoising

    images = _denoise_images(ctx)
    candidates = {"purifier": ctx.purifier}
    small = next((a for a in ctx.results.data["artifacts"] if a["name"] == "purifier_small" and a.get("returned")),
                 None)
    if small is not None:  # the small purifier as it came back
        state, meta = load_transport(read_parts(ctx.out, small))
        unet = UNet2DModel.from_config(json.loads(meta["config"]))
        unet.load_state_dict(state)
        sched = NoiseSchedule.from_diffusers_config(json.loads(meta["scheduler"]))
        candidates["purifier_small"] = Purifier(unet, sched).to(_device())
    try:
        candidates["shipped"] = default_purifier(32, device=_device())
    except FileNotFoundError:
        pass
    table = {}
    for name, purifier in candidates.items():
        res = evaluate_denoising(purifier, images, (20, 120, 300), mode="ddim", stride=20, batch_size=256,
                                 seed=ctx.plan.seed)
        table[name] = {str(t): {k: round(v, 3) for k, v in row.items()} for t, row in res.items()}
        log.info("denoising %s: %s", name, {t: r["psnr_restored"] for t, r in table[name].items()})
    return {"n": len(images), "mode": "ddim", "stride": 20, "levels": [20, 120, 300],
            "images": f"stratified_subset_indices(test.labels, {len(images) // ctx.test.num_classes}, "
                      f"seed={ctx.plan.seed}) of the test split", "purifiers": table}


def sampdetox_config(plan: Plan, profile: str, **fields: Any):
    from detoxops.config import SampDetoxConfig

    return SampDetoxConfig(profile=profile, **{**plan.sampdetox_overrides, **fields}).resolved()


def sampdetox_passes(cfg) -> float:
    """UNet passes per image of one SampDetox call: stage 1, the localiser's restorations, stage 2."""
    c = cfg.resolved()
    loc = {"diff": c.t_loc, "spread": c.t_loc * c.spread_k}.get(c.localiser, 0)
    stage2 = c.t2 if c.stage2 == "soft" else c.t_mask
    stride = c.ddim_stride if c.sampler == "ddim" else 1
    return sum(math.ceil(t / stride) for t in (c.t1, loc, stage2) if t)


def throughput(ctx: Context, box_s: float) -> dict:
    from detoxops.config import DataElixirConfig
    from detoxops.data import to_tensor
    from detoxops.defenses.elixir.candidates import build_candidates
    from detoxops.defenses.sampdetox import SampDetox
    from detoxops.models import predict

    plan, purifier, dev = ctx.plan, ctx.purifier, _device()
    end = time.time() + box_s
    b = plan.throughput_batch
    idx = np.arange(b) % len(ctx.test)
    x01 = to_tensor(np.asarray(ctx.test.images)[idx])
    rows: dict[str, Any] = {"batch": b}
    # UNet passes/s, the unit every other cost is counted in
    x = (x01 * 2 - 1).to(dev)
    levels = torch.full((b,), 100, device=dev)
    purifier(x, levels)
    reps = 10 if dev.type == "cuda" else 2
    sec = _timed(lambda: purifier(x, levels), reps)
    passes_per_s = b / sec
    rows["unet_passes_per_s"] = round(passes_per_s, 1)
    ctx.rates["unet_passes_per_s"] = passes_per_s
    log.info("UNet: %.0f image-passes/s at batch %d", passes_per_s, b)

    def fits(passes_per_image: float) -> bool:
        return time.time() + 1.3 * b * passes_per_image / passes_per_s < end

    victim = ctx.victim(plan.elixir_attack) or ctx.victim("clean")
    if victim is not None:
        n = len(ctx.test)
        sec = _timed(lambda: predict(victim, np.asarray(ctx.test.images), batch_size=512))
        rows["classifier_images_per_s"] = round(n / sec, 1)
    for profile in plan.sampdetox_profiles:
        for sampler, reps in (("ddim", 3), ("ddpm", 1)):
            cfg = sampdetox_config(plan, profile, sampler=sampler, batch_size=b, seed=plan.seed)
            key = f"sampdetox_{profile}_{sampler}"
            if not fits(sampdetox_passes(cfg) * (reps + (1 if sampler == "ddim" else 0))):
                rows[key] = {"skipped": "time box"}
                continue
            sd = SampDetox(purifier, cfg)
            if sampler == "ddim":
                sd(x01)  # warm-up: the DDPM run after it reuses the same kernels
            sec = _timed(lambda sd=sd: sd(x01), reps)
            rows[key] = {"images_per_s": round(b / sec, 2), "seconds": round(sec, 3), "reps": reps}
            ctx.rates[key] = b / sec
            log.info("%s: %.1f images/s", key, b / sec)
    # DataElixir candidate construction (stage 1, nearly all of its cost): paper DDPM and DDIM stride 10
    if victim is not None:
        base = DataElixirConfig(seed=plan.seed, batch_size=b, **({"profile": "paper"} | plan.elixir)).resolved(int(x01.shape[-1]))
        ddim_stride = max(1, min(10, base.T // base.keep_last))  # a round must have keep_last steps (10 at T = 150)
        for label, overrides in ((f"ddim{ddim_stride}", {"sampler": "ddim", "ddim_stride": ddim_stride}),
                                 ("ddpm", {})):
            cfg = base.model_copy(update=overrides)
            stride = cfg.ddim_stride if cfg.sampler == "ddim" else 1
            per_image = cfg.T * cfg.rounds / stride + cfg.keep_last * cfg.rounds * 0.05
            key = f"dataelixir_{label}"
            if not fits(per_image):
                rows[key] = {"skipped": "time box"}
                continue
            gen = torch.Generator(device=dev).manual_seed(plan.seed)
            sec = _timed(lambda cfg=cfg, gen=gen: build_candidates(purifier, victim.to(dev), x01, cfg, gen))
            rows[key] = {"images_per_s": round(b / sec, 2), "seconds": round(sec, 3), "T": cfg.T,
                         "rounds": cfg.rounds, "keep_last": cfg.keep_last, "sampler": cfg.sampler,
                         "stride": stride}
            ctx.rates[key] = b / sec
            log.info("%s: %.1f images/s", key, b / sec)
    rows["settings"] = {"autocast": "bf16" if dev.type == "cuda" else "none",
                        "channels_last": dev.type == "cuda", "compiled": False,
                        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}
    return rows


def evaluate_sampdetox(ctx: Context, box_s: float) -> dict:
    """No defense / faithful / default SampDetox on the held-out half of the test split, every victim."""
    from detoxops.data import from_tensor, stratified_split_indices, stratified_subset_indices, to_tensor
    from detoxops.defenses.sampdetox import SampDetox
    from detoxops.models import predict

    plan, test = ctx.plan, ctx.test
    end = time.time() + box_s
    attacks = [a for a in plan.attacks if a != "clean" and ctx.victim(a) is not None and ctx.triggered(a)]
    victims = [a for a in plan.attacks if ctx.victim(a) is not None]
    if not victims:
        raise RuntimeError("no victim was trained: nothing to evaluate")
    # the reporting half, as benchmarks/sampdetox_eval.py cuts it: ("test" = rest, "val" = held out for tuning)
    rest, _val = stratified_split_indices(test.labels, 0.5, seed=0)
    per_image_s = sum(1.0 / ctx.rates[f"sampdetox_{p}_ddpm"] if ctx.rates.get(f"sampdetox_{p}_ddpm") else 0.0
                      for p in plan.sampdetox_profiles)
    k = len(attacks) * plan.sampdetox_triggered_ratio
    n_clean_fit = (0.8 * box_s / per_image_s / (1 + k)) if per_image_s > 0 else plan.sampdetox_max_clean
    n_clean = _clamp_count(n_clean_fit, plan.sampdetox_min_clean, min(plan.sampdetox_max_clean, len(rest)),
                           test.num_classes)
    sub = stratified_subset_indices(test.labels[rest], max(1, n_clean // test.num_classes), seed=plan.seed)
    clean_idx = rest[sub]
    groups: dict[str, tuple[np.ndarray, np.ndarray]] = {"clean": (np.asarray(test.images)[clean_idx],
                                                                  test.labels[clean_idx])}
    rest_sources = set(np.asarray(test.source_index)[rest].tolist())
    rng = np.random.default_rng(plan.seed)
    n_trig = max(1, int(round(len(clean_idx) * plan.sampdetox_triggered_ratio)))
    for a in attacks:
        trig = ctx.triggered(a)
        pool = np.flatnonzero([int(s) in rest_sources for s in trig.source_index])
        pick = np.sort(rng.permutation(pool)[:n_trig])
        groups[a] = (np.asarray(trig.images)[pick], np.asarray(trig.original_labels)[pick])
    # interleaved rounds: a run cut short still has every (setting, attack) cell, on fewer images
    total = sum(len(g[0]) for g in groups.values())
    rounds = max(1, math.ceil(total / plan.sampdetox_batch))
    chunks = {name: np.array_split(np.arange(len(g[0])), rounds) for name, g in groups.items()}
    outputs: dict[str, dict[str, list[np.ndarray]]] = {p: {g: [] for g in groups} for p in plan.sampdetox_profiles}
    done_idx: dict[str, list[np.ndarray]] = {g: [] for g in groups}
    status = "complete"
    t0 = time.time()
    for r in range(rounds):
        if r and time.time() + (time.time() - t0) / r > end:
            status = f"partial: {r} of {rounds} rounds in the time box"
            break
        batch = np.concatenate([groups[g][0][chunks[g][r]] for g in groups])
        sizes = [len(chunks[g][r]) for g in groups]
        x01 = to_tensor(batch)
        for profile in plan.sampdetox_profiles:
            sd = SampDetox(ctx.purifier, sampdetox_config(plan, profile, batch_size=plan.sampdetox_batch,
                                                          seed=plan.seed * 1000 + r))
            det = from_tensor(sd(x01).images.cpu())
            for g, part in zip(groups, np.split(det, np.cumsum(sizes)[:-1]), strict=True):
                outputs[profile][g].append(part)
        for g in groups:
            done_idx[g].append(chunks[g][r])
    seconds = time.time() - t0
    sel = {g: np.concatenate(done_idx[g]) for g in groups}
    images = {"none": {g: groups[g][0][sel[g]] for g in groups}}
    for profile in plan.sampdetox_profiles:
        images[profile] = {g: np.concatenate(outputs[profile][g]) if outputs[profile][g] else groups[g][0][:0]
                           for g in groups}
    rows = []
    for victim_name in victims:
        model = ctx.victim(victim_name)
        for setting, by_group in images.items():
            clean_pred = predict(model, by_group["clean"])
            row = {"victim": victim_name, "setting": setting, "n_clean": int(len(clean_pred)),
                   "ca": round(100 * float(np.mean(clean_pred == groups["clean"][1][sel["clean"]])), 2)}
            if victim_name != "clean" and victim_name in groups:  # the clean model has no trigger to score
                pred = predict(model, by_group[victim_name])
                true = groups[victim_name][1][sel[victim_name]]
                row.update(n_triggered=int(len(pred)), pa=round(100 * float(np.mean(pred == true)), 2),
                           asr=round(100 * float(np.mean(pred == plan.target)), 2))
            rows.append(row)
    return {"split": "test half of stratified_split_indices(test.labels, 0.5, seed=0) (the half sampdetox_eval "
                     "reports on; the other half is for tuning)",
            "sampler": "ddpm", "profiles": {p: sampdetox_config(plan, p).model_dump() for p in plan.sampdetox_profiles},
            "status": status, "rounds": rounds, "seconds": round(seconds, 1), "rows": rows,
            "planned": {"n_clean": int(len(clean_idx)), "n_triggered_per_attack": n_trig}}


def evaluate_dataelixir(ctx: Context, box_s: float) -> dict:
    from detoxops.config import DataElixirConfig, Params, VictimConfig
    from detoxops.data import ImageSet, stratified_subset_indices
    from detoxops.metrics import detection_rates
    from detoxops.operations import sanitize

    plan = ctx.plan
    name = plan.elixir_attack
    victim = ctx.victim(name)
    folder = ctx.work / "poisoned" / name
    if victim is None or not folder.is_dir():
        raise RuntimeError(f"no {name} victim / poisoned training set (victims stage skipped it?)")
    poisoned = ImageSet.load(folder)
    cfg = DataElixirConfig(seed=plan.seed, batch_size=plan.throughput_batch,
                           **({"profile": "paper"} | plan.elixir)).resolved(
        int(poisoned.images.shape[1]))
    rate = ctx.rates.get("dataelixir_ddpm") if cfg.sampler == "ddpm" else next(
        (v for k, v in ctx.rates.items() if k.startswith("dataelixir_ddim")), None)
    n_fit = 0.6 * box_s * rate if rate else plan.elixir_max_per_class * poisoned.num_classes
    per_class = _clamp_count(n_fit / poisoned.num_classes, plan.elixir_min_per_class, plan.elixir_max_per_class)
    idx = stratified_subset_indices(poisoned.original_labels, per_class, seed=plan.seed)  # keeps the poison ratio
    subset = poisoned.subset(idx)
    spec = getattr(victim, "detoxops_spec", {})
    # the relabelling model is the victim's recipe for dataelixir.relabel_epochs (operations.relabel_config)
    victim_cfg = VictimConfig(arch=spec.get("arch", plan.victim_arch), batch_size=plan.victim_batch, seed=plan.seed,
                              **({"width": plan.victim_width} if plan.victim_width else {}))
    t0 = time.time()
    # the one sanitize operation (the CLI's, the pipeline's, the flows'), with the purifier already on the GPU
    res = sanitize(subset, victim, Params(dataelixir=cfg, victim=victim_cfg), out=ctx.work / "elixir" / f"{name}.out",
                   workdir=ctx.work / "elixir" / name, purifier=ctx.purifier, overwrite=True, progress=False)
    seconds = time.time() - t0
    flags = np.asarray(subset.poisoned, dtype=bool)
    purified_labels = ImageSet.load(res.dataset).labels
    tpr, fpr = detection_rates(subset.labels, purified_labels, flags)  # NaN where undefined (kept in the JSON)
    restored = (float(np.mean(purified_labels[flags] == subset.original_labels[flags])) if flags.any()
                else float("nan"))
    return {"attack": name, "n": len(subset), "per_class": per_class, "poisoned": int(flags.sum()),
            "config": cfg.model_dump(), "seconds": round(seconds, 1), "images_per_s": round(len(subset) / seconds, 2),
            "target_labels": res.target_labels, "true_target": plan.target,
            "tpr": round(100 * tpr, 2), "fpr": round(100 * fpr, 2),
            "poisoned_label_restored": round(100 * restored, 2), "flagged": res.flagged,
            "anomaly_index": res.anomaly,
            "subset": f"stratified_subset_indices(original_labels, {per_class}, seed={plan.seed}) of the "
                      f"{name}-poisoned training set"}


def compiled_throughput(ctx: Context) -> dict:
    from detoxops.data import to_tensor
    from detoxops.defenses.sampdetox import SampDetox
    from detoxops.diffusion import Purifier

    plan, dev = ctx.plan, _device()
    b = plan.throughput_batch
    compiled = Purifier(torch.compile(ctx.purifier.unet), ctx.purifier.schedule)
    x01 = to_tensor(np.asarray(ctx.test.images)[np.arange(b) % len(ctx.test)])
    x = (x01 * 2 - 1).to(dev)
    levels = torch.full((b,), 100, device=dev)
    compile_s = _timed(lambda: compiled(x, levels))
    sec = _timed(lambda: compiled(x, levels), 10)
    rows = {"compile_seconds": round(compile_s, 1), "unet_passes_per_s": round(b / sec, 1), "batch": b}
    sd = SampDetox(compiled, sampdetox_config(plan, "faithful", sampler="ddim", batch_size=b, seed=plan.seed))
    sd(x01)
    sec = _timed(lambda: sd(x01), 3)
    rows["sampdetox_faithful_ddim"] = {"images_per_s": round(b / sec, 2)}
    return rows


# --------------------------------------------------------------------------------------- child stages
def child_victims(plan: Plan, out: Path, work: Path, deadline: float, allocation: dict) -> None:
    """Trains the victims in the stated order until the deadline; writes work/victims.json after each."""
    from detoxops.attacks import registry
    from detoxops.attacks.poisoning import poison_datasets
    from detoxops.config import VictimConfig
    from detoxops.data import ImageSet
    from detoxops.metrics import attack_success_rate, clean_accuracy, poisoned_accuracy
    from detoxops.models import build_classifier, predict, save_classifier, train_classifier

    train = ImageSet.load(work / "data" / "train")
    test = ImageSet.load(work / "data" / "test")
    status_path = work / "victims.json"
    state: dict[str, Any] = {"victims": {}, "artifacts": []}
    last_seconds = None
    for name in plan.attacks:
        left = deadline - time.time()
        if last_seconds is not None and 1.1 * last_seconds > left:
            state["victims"][name] = {"status": "skipped", "reason": f"{left:.0f} s left, the last victim took "
                                                                     f"{last_seconds:.0f} s"}
            log.warning("victim %s skipped: %s", name, state["victims"][name]["reason"])
            write_json(status_path, state)
            continue
        t0 = time.time()
        attack = None
        train_set, triggered = train, None
        if name != "clean":
            attack = registry.create(name, target=plan.target, poison_ratio=plan.poison_ratio, seed=plan.seed,
                                     image_size=train.images.shape[1], num_classes=train.num_classes)
            if attack.needs_fit and not attack.is_fitted:
                attack.fit(train.images, train.labels)
            train_set, triggered = poison_datasets(attack, train, test)
        model = build_classifier(plan.victim_arch, train.num_classes, 3, train.images.shape[1], seed=plan.seed,
                                 width=plan.victim_width)
        cfg = VictimConfig(arch=plan.victim_arch, epochs=plan.victim_epochs, batch_size=plan.victim_batch,
                           seed=plan.seed, **({"width": plan.victim_width} if plan.victim_width else {}))
        history = train_classifier(model, train_set, cfg, attack=attack if attack is not None and
                                   attack.kind == "loop" else None, progress=False)
        train_s = time.time() - t0
        spec = dict(model.detoxops_spec)
        alloc = allocation.get(f"victim-{name}", {"precision": None, "reserved_bytes": 0})
        state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        row = emit_artifact(out, f"victim-{name}", "classifier", state_dict, alloc["precision"],
                            alloc["reserved_bytes"], plan.part_bytes, spec)
        back = row.pop("_state", None)
        if back is not None:  # evaluate (and keep) exactly the weights that come back
            model.load_state_dict(back)
            row["fingerprint"] = fingerprint_classifier(spec, back)
        metrics: dict[str, Any] = {"status": "done", "arch": plan.victim_arch, "epochs": plan.victim_epochs,
                                   "train_seconds": round(train_s, 1),
                                   "images_per_s": round(plan.victim_epochs * len(train_set) / train_s, 1),
                                   "final_loss": round(history["loss"][-1], 4) if history.get("loss") else None,
                                   "final_train_acc": round(history["train_acc"][-1], 4)
                                   if history.get("train_acc") else None,
                                   "transport": row["precision"], "n_train": len(train_set)}
        metrics["ca"] = round(100 * clean_accuracy(predict(model, test.images), test.labels), 2)
        if triggered is not None:
            pred = predict(model, triggered.images)
            metrics.update(pa=round(100 * poisoned_accuracy(pred, triggered.original_labels), 2),
                           asr=round(100 * attack_success_rate(pred, attack.target), 2),
                           num_poisoned=int(np.asarray(train_set.poisoned).sum()), n_triggered=len(triggered))
            triggered.save(work / "triggered" / name, overwrite=True)
            if name == plan.elixir_attack:
                train_set.save(work / "poisoned" / name, overwrite=True)
        save_classifier(model, work / "victims" / name, meta={k: v for k, v in metrics.items() if k != "status"})
        metrics["seconds"] = round(time.time() - t0, 1)
        last_seconds = metrics["seconds"]
        state["victims"][name] = metrics
        state["artifacts"].append(row)
        write_json(status_path, state)
        log.info("victim %s: CA %s ASR %s (%.0f s, %s)", name, metrics["ca"], metrics.get("asr", "-"),
                 metrics["seconds"], row["precision"])


def child_small_purifier(plan: Plan, out: Path, work: Path, deadline: float, allocation: dict) -> None:
    from detoxops.data import ImageSet
    from detoxops.diffusion import count_params, train_purifier

    train = ImageSet.load(work / "data" / "train")
    cfg = purifier_config(plan, small=True)
    box = max(1.0, min(plan.small_box_s, deadline - time.time() - 5.0))
    t0 = time.time()
    purifier, history = train_purifier(train.images, cfg, work / "purifier_small", progress=False, time_budget_s=box)
    steps = int(history["step"])
    info = {"unet": cfg.unet.model_dump(), "params": count_params(purifier.unet), "train": cfg.train.model_dump(),
            "steps": steps, "images_seen": steps * plan.small_batch,
            "train_seconds": round(float(history["seconds"]), 1), "wall_seconds": round(time.time() - t0, 1),
            "images_per_s": round(steps * plan.small_batch / max(float(history["seconds"]), 1e-9), 1),
            "loss": history["loss"][-20:], "time_box_s": round(box, 1),
            "data": f"CIFAR-10 train split, {len(train)} images (clean), horizontal flips"}
    alloc = allocation.get("purifier_small", {"precision": None, "reserved_bytes": 0})
    unet = purifier.unet
    state = {k: v.detach().cpu() for k, v in unet.state_dict().items()}
    row = emit_artifact(out, "purifier_small", "purifier", state, alloc["precision"], alloc["reserved_bytes"],
                        plan.part_bytes, dict(unet.config),
                        {"scheduler": json.dumps(purifier.schedule.to_diffusers_config())})
    back = row.pop("_state", None)
    if back is not None:
        row["fingerprint"] = fingerprint_purifier(dict(unet.config), back)
    info["transport"] = row["precision"]
    write_json(work / "purifier_small.json", {"purifier_small": info, "artifacts": [row]})
    log.info("small purifier: %d steps in %.0f s (%s)", steps, history["seconds"], row["precision"])


CHILD_STAGES = {"victims": child_victims, "purifier_small": child_small_purifier}


def child_main(args: argparse.Namespace) -> int:
    spec = json.loads((args.workdir / "plan.json").read_text())
    plan = Plan(**spec["plan"])
    setup_logging(args.out, f"[{args.stage}]")
    torch.set_num_threads(max(1, int(spec["threads"])))
    _configure_backends()
    try:
        CHILD_STAGES[args.stage](plan, args.out, args.workdir, float(spec["deadline"]), spec["allocation"])
    except Exception as exc:  # noqa: BLE001 - reported to the parent through the status file
        log.error("%s failed: %s\n%s", args.stage, exc, traceback.format_exc())
        status = args.workdir / f"{args.stage}.json"
        old = json.loads(status.read_text()) if status.is_file() else {}
        write_json(status, {**old, "error": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc()[-3000:]})
        return 1
    return 0


def _configure_backends() -> None:
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def spawn_child(ctx: Context, stage: str) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--workdir", str(ctx.work),
           "--out", str(ctx.out)]
    proc = subprocess.Popen(cmd, env=os.environ.copy())
    ctx.children.append(proc)
    return proc


def merge_children(ctx: Context) -> None:
    data = ctx.results.data
    for stage in CHILD_STAGES:
        path = ctx.work / f"{stage}.json"
        if not path.is_file():
            continue
        try:
            part = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        known = {a["name"] for a in data["artifacts"]}
        data["artifacts"].extend(a for a in part.get("artifacts", []) if a["name"] not in known)
        if stage == "victims":
            data["victims"] = part.get("victims", {})
        else:
            data["purifiers"]["purifier_small"] = part.get("purifier_small")
        if "error" in part:
            data.setdefault("errors", {})[stage] = part["error"]


def parallel_phase(ctx: Context) -> None:
    plan = ctx.plan
    box = min(plan.purifier_box_max_s, ctx.clock.remaining() - plan.post_parallel_s())
    if box < 5:
        raise RuntimeError(f"no time for the parallel phase ({box:.0f} s)")
    deadline = time.time() + box
    threads = plan.cpu_threads or max(1, (os.cpu_count() or 2) // (3 if plan.parallel else 1))
    write_json(ctx.work / "plan.json", {"plan": asdict(plan), "deadline": deadline, "allocation": ctx.allocation,
                                        "threads": threads})
    ctx.results.data["parallel_phase"] = {"box_s": round(box, 1), "threads_per_process": threads}
    procs, spawned = {}, time.time()
    if plan.parallel:
        torch.set_num_threads(threads)
        procs = {stage: spawn_child(ctx, stage) for stage in CHILD_STAGES}
    phase_start = round(ctx.clock.elapsed(), 1)
    ctx.results.data["purifiers"]["purifier"] = run_stage(
        ctx, "purifier", lambda: train_big_purifier(ctx, max(1.0, box - 8.0)), min_s=5)
    if not plan.parallel:  # one after the other, each with what is left of the box
        for stage, fn in CHILD_STAGES.items():
            run_stage(ctx, stage, lambda fn=fn: fn(plan, ctx.out, ctx.work, deadline + 10, ctx.allocation))
    for stage, proc in procs.items():
        wait = max(0.0, deadline + 15.0 - time.time())
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            log.warning("%s still running at the deadline: stopped (finished victims are kept)", stage)
            proc.kill()
            proc.wait()
        ctx.results.data["timeline"].append({"stage": stage, "status": "done" if proc.returncode == 0 else
                                             f"exit {proc.returncode}", "start_s": phase_start,
                                             "joined_after_s": round(time.time() - spawned, 1),
                                             "note": "child process, concurrent with the purifier; its own "
                                                     "times are in victims / purifiers.purifier_small"})
    torch.set_num_threads(plan.cpu_threads or os.cpu_count() or 1)
    merge_children(ctx)


def finalize(ctx: Context, status: str) -> None:
    data = ctx.results.data

    def listing() -> list[Path]:
        return sorted(p for p in ctx.out.iterdir() if p.is_file() and not p.name.startswith("."))

    def over_limits() -> bool:
        files = listing()
        # results.json is rewritten below: count room for it
        return len(files) + (RESULTS not in {p.name for p in files}) > OUT_MAX_FILES or \
            sum(p.stat().st_size for p in files) + 500_000 > OUT_TOTAL_LIMIT

    # the limits of what comes back: drop the lowest-priority artifacts if ever over (the plan keeps under them)
    returned = [a for a in data["artifacts"] if a.get("returned")][::-1]
    while returned and over_limits():
        dropped = returned.pop(0)
        for part in dropped.get("parts", []):
            (ctx.out / part["file"]).unlink(missing_ok=True)
        dropped.update(returned=False, reason="removed: over the output limits")
        log.error("artifact %s removed: over the output limits", dropped["name"])
    for stray in ctx.out.iterdir():  # temp files of writes cut short
        if stray.name.startswith(".") and stray.is_file():
            stray.unlink()
    data["outputs"] = [{"file": p.name, "bytes": p.stat().st_size} for p in listing() if p.name != RESULTS]
    data["status"] = status
    data["elapsed_s"] = round(ctx.clock.elapsed(), 1)
    ctx.results.write()


def start_watchdog(ctx: Context) -> threading.Timer:
    def fire() -> None:
        log.error("watchdog: the budget (%.0f s) + grace ran out; writing what exists and exiting",
                  ctx.plan.budget_s)
        for proc in ctx.children:
            if proc.poll() is None:
                proc.kill()
        with ctx.results.lock:
            merge_children(ctx)
            finalize(ctx, "watchdog: ended at the budget")
        logging.shutdown()
        os._exit(3)

    timer = threading.Timer(max(1.0, ctx.clock.remaining() + ctx.plan.watchdog_grace_s), fire)
    timer.daemon = True
    timer.start()
    return timer


def summary_lines(data: dict) -> list[str]:
    lines = [f"device: {data['device'].get('name')} | status: {data.get('status')} | "
             f"elapsed {data.get('elapsed_s')} s"]
    for entry in data["timeline"]:
        lines.append(f"  {entry['stage']:<16} {entry.get('status', '?'):<10} {entry.get('seconds', '')}")
    pur = data["purifiers"].get("purifier") or {}
    if pur:
        lines.append(f"purifier: {pur.get('params')} params, {pur.get('steps')} steps, "
                     f"{pur.get('images_per_s')} img/s, transport {pur.get('transport')}")
    for name, v in data.get("victims", {}).items():
        lines.append(f"victim {name}: CA {v.get('ca')} ASR {v.get('asr', '-')} ({v.get('status')})")
    for row in (data.get("sampdetox") or {}).get("rows", []):
        lines.append(f"sampdetox {row['victim']:<8} {row['setting']:<9} CA {row['ca']} "
                     f"ASR {row.get('asr', '-')} PA {row.get('pa', '-')}")
    el = data.get("dataelixir") or {}
    if el:
        lines.append(f"dataelixir {el.get('attack')}: n {el.get('n')} TPR {el.get('tpr')} FPR {el.get('fpr')} "
                     f"target {el.get('target_labels')}")
    for out in data.get("outputs", []):
        lines.append(f"  $OUT/{out['file']}: {out['bytes']} bytes")
    return lines


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU, end to end (the test runs this)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT, else runs/gpu_run)")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a new one under /tmp)")
    ap.add_argument("--bundle", type=Path, default=ROOT / "gpu_bundle")
    ap.add_argument("--data", type=Path, default=None, help="bundle data file (default: <bundle>/cifar10.npz)")
    ap.add_argument("--budget-s", type=float, default=None, help="seconds for all work (default 520; smoke 170)")
    ap.add_argument("--victim-arch", default=None, help="a detoxops.models.ARCHITECTURES name")
    ap.add_argument("--victim-epochs", type=int, default=None)
    ap.add_argument("--attacks", nargs="+", default=None, help="victims, in order (default clean badnets blended "
                    "wanet)")
    ap.add_argument("--purifier-preset", default=None, help="a UNetConfig preset (default ddpm-cifar10)")
    ap.add_argument("--compile", action="store_true", help="also time a torch.compile'd UNet, last, if time is left")
    ap.add_argument("--no-parallel", action="store_true", help="victims and small purifier after the purifier")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep-log", action="store_true", help="append to an existing run.log (gpu_run.sh's preamble)")
    ap.add_argument("--stage", default="main", choices=["main", *CHILD_STAGES], help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    plan = Plan.smoke_plan() if args.smoke else Plan()
    overrides = {"budget_s": args.budget_s, "victim_arch": args.victim_arch, "victim_epochs": args.victim_epochs,
                 "attacks": args.attacks, "purifier_preset": args.purifier_preset, "seed": args.seed}
    for key, value in overrides.items():
        if value is not None:
            setattr(plan, key, value)
    if args.compile:
        plan.compile = True
    if args.no_parallel:
        plan.parallel = False
    from detoxops.models import ARCHITECTURES

    if plan.victim_arch not in ARCHITECTURES:
        raise SystemExit(f"--victim-arch {plan.victim_arch!r}: not in detoxops.models.ARCHITECTURES "
                         f"({', '.join(ARCHITECTURES)})")
    if plan.elixir_attack not in plan.attacks:
        plan.elixir_attack = next((a for a in plan.attacks if a != "clean"), plan.elixir_attack)
    return plan


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path(os.environ.get("OUT") or ROOT / "runs" / "gpu_run")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.out = out
    if args.stage != "main":
        return child_main(args)
    start = time.time()
    plan = make_plan(args)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="detoxops-gpu-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():  # a previous run's files in a reused folder (the GPU machine's $OUT starts empty)
        if stale.is_file() and (stale.name == RESULTS or ".safetensors" in stale.name or
                                (stale.name == LOG and not args.keep_log)):
            stale.unlink()
    setup_logging(out, "[main]")
    _configure_backends()
    if plan.cpu_threads:
        torch.set_num_threads(plan.cpu_threads)
    clock = Clock(plan.budget_s, start)
    results = Results(out / RESULTS, {
        "format": RUN_FORMAT, "status": "running", "smoke": plan.smoke,
        "command": "benchmarks/gpu_run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)), "plan": asdict(plan),
        "device": device_info(), "code_sha256": code_sha256(), "timeline": [], "purifiers": {}, "victims": {},
        "artifacts": [],
    })
    ctx = Context(plan=plan, out=out, work=work, clock=clock, results=results)
    results.write()
    watchdog = start_watchdog(ctx)
    try:
        return _run(ctx, args)
    finally:
        watchdog.cancel()


def _run(ctx: Context, args: argparse.Namespace) -> int:
    plan, results, clock = ctx.plan, ctx.results, ctx.clock
    log.info("device %s, budget %.0f s, work %s", results.data["device"].get("name"), plan.budget_s, ctx.work)
    bundle = args.bundle
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    results.data["bundle"] = {k: manifest[k] for k in ("created", "code", "wheels") if k in manifest} if manifest \
        else None
    data_file = args.data or bundle / "cifar10.npz"
    results.data["data"] = run_stage(ctx, "data", lambda: load_data(ctx, data_file, manifest))
    if ctx.train is None:
        finalize(ctx, "failed: no data")
        return 1
    results.data["outputs_plan"] = run_stage(ctx, "plan_outputs", lambda: plan_outputs(ctx))
    if not ctx.allocation:
        finalize(ctx, "failed: could not plan the outputs")
        return 1
    try:
        parallel_phase(ctx)
    except Exception as exc:  # noqa: BLE001 - still write what exists, and say why
        log.error("parallel phase failed: %s: %s\n%s", type(exc).__name__, exc, traceback.format_exc())
        for proc in ctx.children:
            if proc.poll() is None:
                proc.kill()
        merge_children(ctx)
        finalize(ctx, f"failed: {type(exc).__name__}: {exc}")
        print("\n".join(summary_lines(results.data)))
        return 1
    if ctx.purifier is None:
        finalize(ctx, "failed: no purifier")
        print("\n".join(summary_lines(results.data)))
        return 1
    results.data["denoising"] = run_stage(ctx, "denoising", lambda: denoising_table(ctx), min_s=5)
    results.data["throughput"] = run_stage(
        ctx, "throughput", lambda: throughput(ctx, min(plan.throughput_box_s, clock.remaining() - 30)), min_s=10)
    tail_reserve = plan.final_reserve_s + (plan.compile_box_s if plan.compile else 0)
    results.data["sampdetox"] = run_stage(
        ctx, "sampdetox", lambda: evaluate_sampdetox(
            ctx, min(plan.sampdetox_box_s, clock.remaining() - tail_reserve - min(plan.elixir_box_s, 20))),
        min_s=10)
    results.data["dataelixir"] = run_stage(
        ctx, "dataelixir", lambda: evaluate_dataelixir(
            ctx, min(plan.elixir_box_s, clock.remaining() - tail_reserve)), min_s=10)
    if plan.compile:
        results.data["throughput_compiled"] = run_stage(ctx, "compile", lambda: compiled_throughput(ctx),
                                                        min_s=plan.compile_box_s * 0.6)
    failed = [e["stage"] for e in results.data["timeline"] if e.get("status") not in ("done", None)]
    finalize(ctx, "complete" if not failed else f"complete with stages not done: {', '.join(failed)}")
    print("\n".join(summary_lines(results.data)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
