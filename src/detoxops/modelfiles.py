"""Validation of model files before anything is allocated: one error type, :class:`ModelFileError`.

A classifier or purifier folder is untrusted input (downloaded, shared, registered by someone else). Loading one
goes in this order, and each step names the file and the field it refused:

1. the JSON config (at most 1 MiB) is read and every size in it is checked against bounds (``sample_size`` 1e9 or
   ``block_out_channels`` 8192 would otherwise allocate until the process is killed);
2. the network is built on PyTorch's ``meta`` device -- no memory -- and its parameter count is bounded
   (:data:`MAX_PARAMETERS`);
3. the safetensors header is parsed by hand (length, JSON, every tensor's dtype, shape and byte range inside the
   file: a truncated file is caught here) and compared with the network's tensors -- names, shapes, dtypes;
4. only then are the tensors read, and every floating-point tensor must be finite (NaN / inf weights are refused).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ModelFileError",
    "MAX_CONFIG_BYTES",
    "MAX_PARAMETERS",
    "read_json_config",
    "safetensors_header",
    "check_state_header",
    "load_checked_state",
    "check_finite_state",
    "check_parameter_budget",
    "bounded_int",
    "count_meta_parameters",
]

MAX_CONFIG_BYTES = 1 << 20
MAX_PARAMETERS = 500_000_000
"""Largest network a model file may describe (2 GB in float32; the DDPM CIFAR-10 UNet has 35.7M)."""
_MAX_HEADER_BYTES = 100 << 20
_FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_INT_DTYPES = {"I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
               "BOOL": torch.bool}
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class ModelFileError(ValueError):
    """A model file (config or weights) is malformed, out of bounds, or does not match its architecture."""


def read_json_config(path: Path, what: str = "config") -> dict[str, Any]:
    """A JSON object from ``path`` (at most :data:`MAX_CONFIG_BYTES`), or :class:`ModelFileError`."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ModelFileError(f"{path}: {what} of {size:,} bytes, over {MAX_CONFIG_BYTES:,} (not a model config)")
        value = json.loads(path.read_bytes())
    except OSError as exc:
        raise ModelFileError(f"{path}: unreadable {what} ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: {what} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ModelFileError(f"{path}: {what} must be a JSON object, got {type(value).__name__}")
    return value


def bounded_int(cfg: dict[str, Any], key: str, lo: int, hi: int, where: str, default: Any = ...) -> int:
    """``cfg[key]`` as an int in ``[lo, hi]`` (booleans and fractional numbers refused)."""
    if key not in cfg or cfg[key] is None:
        if default is ...:
            raise ModelFileError(f"{where}: missing {key!r}")
        return default
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        raise ModelFileError(f"{where}: {key} must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ModelFileError(f"{where}: {key} = {value!r} is outside [{lo}, {hi}] (refused before allocating)")
    return int(value)


def count_meta_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())


def check_parameter_budget(module: torch.nn.Module, where: str) -> None:
    n = count_meta_parameters(module)
    if n > MAX_PARAMETERS:
        raise ModelFileError(f"{where}: the config describes a network of {n:,} parameters, over "
                             f"{MAX_PARAMETERS:,} (refused before allocating)")


def safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` from a safetensors file's header, after checking that every tensor's bytes lie
    inside the file (truncation) and match its dtype and shape."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise ModelFileError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(_MAX_HEADER_BYTES, size - 8):
                raise ModelFileError(f"{path}: not a safetensors file or truncated (header of {header_len:,} bytes "
                                     f"in a {size:,}-byte file)")
            raw = fh.read(header_len)
    except OSError as exc:
        raise ModelFileError(f"{path}: unreadable weights ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFileError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: not a safetensors file (header is not an object)")
    data_bytes = size - 8 - header_len
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if dtype not in _DTYPE_BYTES:
            raise ModelFileError(f"{path}: tensor {name!r} has dtype {dtype} (float / integer tensors only)")
        if any(d < 0 for d in shape) or not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
            raise ModelFileError(f"{path}: tensor {name!r} has a malformed shape or byte range")
        if end - begin != math.prod(shape) * _DTYPE_BYTES[dtype]:
            raise ModelFileError(f"{path}: tensor {name!r} {dtype} {list(shape)} does not match its byte range")
        if end > data_bytes:
            raise ModelFileError(f"{path}: truncated: tensor {name!r} ends at byte {end:,} of {data_bytes:,} "
                                 "(the file was cut short; download or save it again)")
        out[name] = (dtype, shape)
    return out


def check_state_header(
    header: dict[str, tuple[str, tuple[int, ...]]], expected: dict[str, torch.Tensor], path: Path,
    *, allow_missing: bool = False,
) -> None:
    """Names, shapes and dtype kinds of ``header`` against ``expected`` (a meta-device state dict)."""
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    if unexpected or (missing and not allow_missing):
        raise ModelFileError(f"{path}: weights do not match the config's architecture (missing {missing[:3]}"
                             f"{' …' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                             f"{' …' if len(unexpected) > 3 else ''})")
    for name, (dtype, shape) in header.items():
        want = expected[name]
        if tuple(want.shape) != shape:
            raise ModelFileError(f"{path}: tensor {name!r} has shape {list(shape)}, the config's architecture "
                                 f"needs {list(want.shape)}")
        if want.dtype.is_floating_point != (dtype in _FLOAT_DTYPES):
            raise ModelFileError(f"{path}: tensor {name!r} has dtype {dtype}, the architecture needs {want.dtype}")


def check_finite_state(state: dict[str, torch.Tensor], path: Path) -> None:
    for name, tensor in state.items():
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise ModelFileError(f"{path}: tensor {name!r} holds {bad} NaN / inf value(s) (corrupt or "
                                     "diverged weights)")


def load_checked_state(path: Path, expected: dict[str, torch.Tensor], device: str = "cpu",
                       *, allow_missing: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` after :func:`safetensors_header` / :func:`check_state_header`, all finite."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_state_header(safetensors_header(path), expected, path, allow_missing=allow_missing)
    try:
        state = load_file(path, device=str(device))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: unreadable safetensors weights ({exc})") from None
    check_finite_state(state, path)
    return state
