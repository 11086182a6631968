"""Classifiers made elsewhere, behind one interface: what ``detoxops detox eval --model X`` accepts.

:func:`load_model` takes

* a **detoxops classifier folder** (``classifier.json`` + ``model.safetensors``, :func:`save_classifier`);
* an **ONNX file** (``.onnx``), run with onnxruntime on the CPU. ONNX is a protobuf graph, no pickle. One image
  input, NCHW or NHWC (told apart by the axis of size 3), ``float`` (pixels in [0, 1], or [0, 255] with
  ``input_range="0-255"``; any normalisation belongs inside the graph, as in a detoxops classifier) or
  ``uint8``; the first output is (N, K) scores or (N,) labels. Optional model metadata ``class_names``
  (a JSON list or comma-separated names) gives the label order. ``torch.onnx.export`` of a detoxops
  classifier fits as it is (docs/byo.md);
* an **HTTP endpoint** (``http://host:port`` or the full ``.../invocations``) speaking the served guard's
  contract (:mod:`detoxops.serving`, through the guard's own client
  :class:`detoxops.defenses.guard.HttpClassifier`): ``python -m tasks.serve_guard`` (``.npy`` bodies; its
  ``GET /contract`` gives the input size and batch limit) or ``mlflow models serve`` of the project's pyfunc
  (MLflow's JSON ``{"inputs": ...}``); ``GET /ping`` must answer first;
* a **TorchScript or pickled torch model** (``.pt``, ``.pth``, ``.jit``, ``.pkl`` …) only with
  ``allow_unsafe=True`` (CLI ``--allow-unsafe-model``): loading these formats runs code from the file.

Every adapter gives :class:`LoadedModel`: ``classifier`` is what :class:`detoxops.defenses.guard.Detoxifier`
takes (a torch module or a callable on uint8 (N, H, W, 3) batches returning labels or scores), plus what is known
of the model: input size, number of classes, class names, a content digest for tracking.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

__all__ = ["LoadedModel", "OnnxClassifier", "load_model", "UNSAFE_MODEL_SUFFIXES", "UnsafeModelError"]

UNSAFE_MODEL_SUFFIXES = (".pt", ".pth", ".jit", ".ts", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib", ".tar")
INPUT_RANGES = ("0-1", "0-255")


class UnsafeModelError(ValueError):
    """A model format that runs code when loaded, and no explicit opt-in."""


@dataclass
class LoadedModel:
    classifier: Any
    """A ``torch.nn.Module`` or a callable ``uint8 (N, H, W, 3) -> labels (N,) | scores (N, K)``."""
    kind: str
    """``detoxops`` | ``onnx`` | ``http`` | ``torchscript`` | ``torch-pickle``."""
    source: str
    input_size: tuple[int, int] | None = None
    """(H, W) the model takes, where it says so; None for an HTTP endpoint or dynamic ONNX axes."""
    num_classes: int | None = None
    class_names: list[str] | None = None
    digest: str | None = None
    """sha256 of the model file(s); None for an endpoint."""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The architecture, file name or URL: what the model is called in tables and tags."""
        if self.details.get("arch"):
            return str(self.details["arch"])
        return self.source if self.kind == "http" else Path(self.source).name

    @property
    def description(self) -> str:
        facts = []
        if self.num_classes is not None:
            facts.append(f"{self.num_classes} classes")
        if self.input_size is not None:
            facts.append(f"{self.input_size[0]}x{self.input_size[1]} input")
        facts += [f"{k} {v}" for k, v in self.details.items() if k in ("protocol", "layout") and v]
        return f"{self.kind} {self.name}" + (f" ({', '.join(facts)})" if facts else "")

    def tracking_tags(self) -> dict[str, str]:
        tags = {"model": f"{self.kind}:{self.name}"}
        if self.digest:
            tags["model_digest"] = self.digest[:16]
        return tags


def load_model(
    spec: str | Path,
    *,
    allow_unsafe: bool = False,
    device: str = "cpu",
    input_range: str = "0-1",
    http_protocol: str = "auto",
    http_timeout: float = 120.0,
) -> LoadedModel:
    """The model ``spec`` names (see the module docstring); errors name the path and what was expected."""
    if input_range not in INPUT_RANGES:
        raise ValueError(f"input_range must be one of {', '.join(INPUT_RANGES)}, got {input_range!r}")
    text = str(spec)
    if text.startswith(("http://", "https://")):
        return _load_http(text, http_protocol, http_timeout)
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    if path.is_dir():
        if (path / "classifier.json").is_file():
            return _load_detoxops(path, device)
        if (path / "MLmodel").is_file():
            raise ValueError(
                f"{path}: an MLflow model folder; serve it (`mlflow models serve -m {path} --env-manager local "
                "-p 5001`) and pass --model http://127.0.0.1:5001/invocations"
            )
        raise ValueError(
            f"{path}: not a detoxops classifier folder (no classifier.json); expected that, an .onnx file or an "
            "http(s):// endpoint"
        )
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _load_onnx(path, input_range)
    if suffix == ".safetensors":
        raise ValueError(
            f"{path}: bare safetensors weights carry no architecture; pass the detoxops classifier folder that "
            "holds them (classifier.json + model.safetensors) or export the model to ONNX"
        )
    if suffix in UNSAFE_MODEL_SUFFIXES:
        if not allow_unsafe:
            raise UnsafeModelError(
                f"{path}: {suffix} is a pickle-based format (TorchScript / torch.save); loading it can run any "
                "code in the file. Export the model to ONNX (docs/byo.md), or pass --allow-unsafe-model if you "
                "trust where the file comes from"
            )
        return _load_unsafe_torch(path, device, input_range)
    raise ValueError(
        f"{path}: unknown model format {suffix or '(no suffix)'!r}; expected a detoxops classifier folder, an "
        ".onnx file or an http(s):// endpoint (TorchScript / pickles only with --allow-unsafe-model)"
    )


# ------------------------------------------------------------------------------------------ detoxops
def _load_detoxops(path: Path, device: str) -> LoadedModel:
    from detoxops.models.io import WEIGHTS, load_classifier, read_classifier_config

    cfg = read_classifier_config(path)
    model = load_classifier(path, device=device)
    size = int(cfg.get("image_size", 32))
    names = cfg.get("meta", {}).get("class_names")
    return LoadedModel(
        classifier=model,
        kind="detoxops",
        source=str(path),
        input_size=(size, size),
        num_classes=int(cfg["num_classes"]),
        class_names=[str(n) for n in names] if names else None,
        digest=_sha256(path / WEIGHTS),
        details={"arch": cfg.get("arch"), "width": cfg.get("width")},
    )


# ---------------------------------------------------------------------------------------------- ONNX
class OnnxClassifier:
    """``OnnxClassifier(path)(uint8 NHWC) -> outputs``: one onnxruntime CPU session, inputs laid out as the
    graph declares them."""

    def __init__(self, path: str | Path, input_range: str = "0-1") -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError(
                "running an ONNX model needs onnxruntime: .venv/bin/pip install onnxruntime"
            ) from None
        self.path = Path(path)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # onnxruntime's warnings about unused initialisers are noise here
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / InvalidProtobuf types
            raise ValueError(f"{self.path}: onnxruntime cannot load it: {exc}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(
                f"{self.path}: expected one image input, the graph has {len(inputs)} "
                f"({', '.join(i.name for i in inputs)})"
            )
        self.input = inputs[0]
        shape = list(self.input.shape)
        if len(shape) != 4:
            raise ValueError(f"{self.path}: input {self.input.name!r} has shape {shape}, expected 4 axes (N, C, H, W)")
        if shape[1] == 3:
            self.layout, hw = "nchw", shape[2:4]
        elif shape[3] == 3:
            self.layout, hw = "nhwc", shape[1:3]
        else:
            raise ValueError(
                f"{self.path}: input {self.input.name!r} of shape {shape} has no colour axis of size 3 at position "
                "1 (NCHW) or 3 (NHWC)"
            )
        self.input_size = tuple(int(d) for d in hw) if all(isinstance(d, int) for d in hw) else None
        self.batch = int(shape[0]) if isinstance(shape[0], int) and shape[0] > 0 else None
        kinds = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
                 "tensor(uint8)": np.uint8}
        if self.input.type not in kinds:
            raise ValueError(
                f"{self.path}: input {self.input.name!r} is {self.input.type}; expected float, double, float16 or "
                "uint8 pixels"
            )
        self.dtype = kinds[self.input.type]
        self.scale = 1.0 / 255.0 if input_range == "0-1" else 1.0
        output = self.session.get_outputs()[0]
        self.output_name = output.name
        last = output.shape[-1] if output.shape else None
        self.num_classes = int(last) if len(output.shape) == 2 and isinstance(last, int) else None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.class_names = _parse_names(meta.get("class_names"), self.path)

    def _feed(self, images_u8: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images_u8.transpose(0, 3, 1, 2) if self.layout == "nchw" else images_u8)
        if self.dtype == np.uint8:
            return x
        return (x.astype(np.float32) * np.float32(self.scale)).astype(self.dtype)

    def __call__(self, images_u8: np.ndarray) -> np.ndarray:
        x = self._feed(np.asarray(images_u8))
        if self.batch is None:
            return self.session.run([self.output_name], {self.input.name: x})[0]
        parts = []  # a graph exported with a fixed batch size: run it that many images at a time, padded
        for start in range(0, len(x), self.batch):
            chunk = x[start : start + self.batch]
            pad = self.batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            parts.append(self.session.run([self.output_name], {self.input.name: chunk})[0][: self.batch - pad])
        return np.concatenate(parts)


def _load_onnx(path: Path, input_range: str) -> LoadedModel:
    model = OnnxClassifier(path, input_range)
    return LoadedModel(
        classifier=model,
        kind="onnx",
        source=str(path),
        input_size=model.input_size,
        num_classes=model.num_classes if model.num_classes is not None else
        (len(model.class_names) if model.class_names else None),
        class_names=model.class_names,
        digest=_sha256(path),
        details={"layout": model.layout, "input_type": model.input.type, "input_range": input_range},
    )


def _parse_names(raw: str | None, where: Path) -> list[str] | None:
    if not raw:
        return None
    try:
        names = json.loads(raw)
    except json.JSONDecodeError:
        names = [n.strip() for n in raw.split(",")]
    if not isinstance(names, list) or not all(isinstance(n, str | int) for n in names):
        raise ValueError(f"{where}: metadata class_names must be a JSON list or comma-separated names, got {raw!r}")
    return [str(n) for n in names]


# ----------------------------------------------------------------------------------------------- HTTP
def _load_http(url: str, protocol: str, timeout: float) -> LoadedModel:
    """The guard's own client (:class:`detoxops.serving.HttpClassifier`, contract of
    :mod:`detoxops.serving`): ``.npy`` bodies to a detoxops guard server (it answers ``GET /contract``, which also
    gives its input size and batch limit), MLflow-style JSON ``{"inputs": ...}`` to ``mlflow models serve``."""
    from detoxops.serving import HttpClassifier, invocations_url

    if protocol not in ("auto", "mlflow", "guard"):
        raise ValueError(f"http protocol must be auto, mlflow or guard, got {protocol!r}")
    endpoint = invocations_url(url)
    parts = urlsplit(endpoint)
    base = f"{parts.scheme}://{parts.netloc}"
    _get(base + "/ping", timeout=min(timeout, 10.0), what=f"model endpoint {endpoint}")
    contract = None
    if protocol in ("auto", "guard"):
        try:
            contract = json.loads(_get(base + "/contract", timeout=min(timeout, 10.0), what=""))
        except (ValueError, RuntimeError):
            contract = None
        if not isinstance(contract, dict) or "contract_version" not in contract:
            contract = None
    if protocol == "auto":
        protocol = "guard" if contract is not None else "mlflow"
    size = None
    max_batch = None
    if contract is not None:
        shape = contract.get("input_shape") or []
        if len(shape) == 4 and isinstance(shape[1], int) and isinstance(shape[2], int):
            size = (int(shape[1]), int(shape[2]))
        max_batch = int(contract["max_batch"]) if isinstance(contract.get("max_batch"), int) else None
    client = HttpClassifier(endpoint, wire="npy" if protocol == "guard" else "json", timeout=timeout,
                            max_batch=max_batch)
    return LoadedModel(classifier=client, kind="http", source=endpoint, input_size=size,
                       details={"protocol": protocol, "max_batch": max_batch})


def _get(url: str, timeout: float, what: str) -> bytes:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{what or url}: HTTP {exc.code} on GET {url}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        raise ValueError(f"{what or url} unreachable: {getattr(exc, 'reason', exc)}") from None


# ------------------------------------------------------------------------------------ unsafe formats
def _load_unsafe_torch(path: Path, device: str, input_range: str) -> LoadedModel:
    import torch

    kind = "torchscript"
    try:
        module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError):
        kind = "torch-pickle"
        module = torch.load(str(path), map_location=device, weights_only=False)  # opted in: see load_model
    if not isinstance(module, torch.nn.Module | torch.jit.ScriptModule):
        raise ValueError(
            f"{path}: holds a {type(module).__name__}, not a model (a state_dict needs its architecture: save it "
            "as a detoxops classifier folder or export the model to ONNX)"
        )
    module = module.to(device).eval()
    scale = 1.0 / 255.0 if input_range == "0-1" else 1.0

    @torch.no_grad()
    def classify(images_u8: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float().mul(scale).to(device)
        return module(x).detach().cpu().numpy()

    return LoadedModel(classifier=classify, kind=kind, source=str(path), digest=_sha256(path),
                       details={"input_range": input_range})


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
