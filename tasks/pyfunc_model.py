"""An MLflow pyfunc model "detox + classifier": SampDetox (or another catalog defense, or none) in front of the
victim, served with ``mlflow models serve -m models:/detoxops-guard@champion --env-manager local``.

Threat model: a served model must never unpickle a file. So

* the model is logged **as code** (MLflow's "models from code"): this file is copied into the model and
  executed at load time (it ends with ``mlflow.models.set_model(...)``); no ``python_model.pkl`` is written
  (MLflow 3.17 refuses to load one anyway unless ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true``);
* the artifacts are folders of **safetensors** weights (classifier via ``detoxops.models.save_classifier``,
  purifier as a diffusers folder) and a JSON defense spec; :func:`check_artifacts` refuses any other weight
  file (``.pt``, ``.pth``, ``.bin``, ``.pkl``, ``.ckpt``) before anything is loaded;
* the model code imports only ``detoxops`` (which must be installed where the model is served) and MLflow.

Input: images (N, H, W, 3) under the served guard's contract (:mod:`detoxops.serving`, docs/security.md):
uint8 / integers in 0..255, e.g. ``{"inputs": [[[[r, g, b], ...]]]}`` over HTTP, or floats with a declared range
(``"params": {"pixel_range": "0,1"}``); anything else is refused, never cast. Output: int64 labels (N,).

The model is logged **without an input schema** on purpose: MLflow parses JSON inputs with the schema's dtype, so
a uint8 schema turned [0, 1] floats into zeros (a black image, classified with HTTP 200). The contract is enforced
in :meth:`DetoxClassifier.predict` instead. ``mlflow models serve`` has no body-size limit and echoes a request's
data in some of its own error messages; untrusted clients should reach the guard through
``python -m tasks.serve_guard`` (limits from ``params.serve``), which serves the same model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

__all__ = ["DetoxClassifier", "log_guard_model", "check_artifacts", "MODEL_CODE", "UNSAFE_SUFFIXES"]

MODEL_CODE = Path(__file__).resolve()
UNSAFE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib")


def check_artifacts(*folders: str | Path) -> None:
    """Raise ``ValueError`` if a model folder holds a weight format that would be unpickled."""
    for folder in folders:
        folder = Path(folder)
        files = [folder] if folder.is_file() else list(folder.rglob("*"))
        bad = [str(f) for f in files if f.suffix.lower() in UNSAFE_SUFFIXES]
        if bad:
            raise ValueError(f"refusing pickle-capable weight files (safetensors only): {', '.join(bad)}")


class DetoxClassifier(mlflow.pyfunc.PythonModel):
    """``predict(images) -> labels`` through ``Detoxifier(classifier, defense)`` (see detoxops.defenses.guard)."""

    def load_context(self, context) -> None:
        from detoxops.config import SampDetoxConfig
        from detoxops.defenses.catalog import build_defense
        from detoxops.defenses.guard import Detoxifier
        from detoxops.devices import resolve_device
        from detoxops.models import load_classifier

        spec = json.loads(Path(context.artifacts["defense"]).read_text())
        folders = [context.artifacts["classifier"]]
        if "purifier" in context.artifacts:
            folders.append(context.artifacts["purifier"])
        check_artifacts(*folders)
        device = str(resolve_device())
        classifier = load_classifier(context.artifacts["classifier"], device=device).eval()
        purifier = None
        if "purifier" in context.artifacts:
            from detoxops.diffusion import load_purifier

            purifier = load_purifier(context.artifacts["purifier"], device=device)
        cfg = SampDetoxConfig(**spec["sampdetox"])
        self.defense_name = spec["defense"]
        self.image_size = int(getattr(classifier, "detoxops_spec", {}).get("image_size") or 0) or None
        self.guard = Detoxifier(classifier, build_defense(spec["defense"], purifier, cfg, classifier=classifier),
                                batch_size=cfg.batch_size)

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        from detoxops.serving import ContractError, check_shape, parse_pixel_range, to_uint8_images

        if isinstance(model_input, dict):  # {"inputs": {"images": ...}} style
            model_input = next(iter(model_input.values()))
        images = np.asarray(model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input)
        try:
            check_shape(images.shape, max_batch=len(images) or 1, max_image_side=max(images.shape[1:3], default=1),
                        image_size=self.image_size)
            images = to_uint8_images(images, parse_pixel_range((params or {}).get("pixel_range")))
        except ContractError as exc:  # a plain ValueError: MLflow answers 400 without echoing the input
            raise ValueError(exc.message) from None
        return np.asarray(self.guard.predict(np.ascontiguousarray(images)), dtype=np.int64)


def log_guard_model(
    classifier_dir: str | Path,
    purifier_dir: str | Path | None,
    defense: str,
    sampdetox_cfg: dict,
    example: np.ndarray,
    workdir: str | Path,
    name: str = "guard",
    registered_model_name: str | None = None,
):
    """Log the guard on the active run (models-from-code, safetensors artifacts); returns MLflow's ModelInfo.

    ``defense`` is a catalog name (``none``, ``sampdetox``, ``faithful`` …); ``purifier_dir`` may be None for
    defenses that need no diffusion model. ``example`` (uint8 (N, H, W, 3)) fixes the tensor signature.
    """
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import ParamSchema, ParamSpec

    from detoxops.defenses.catalog import needs_purifier

    if needs_purifier([defense]) and purifier_dir is None:
        raise ValueError(f"defense {defense!r} needs a purifier folder")
    artifacts = {"classifier": str(classifier_dir)}
    if purifier_dir is not None and needs_purifier([defense]):
        artifacts["purifier"] = str(purifier_dir)
    check_artifacts(*artifacts.values())
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spec = workdir / "defense.json"
    spec.write_text(json.dumps({"defense": defense, "sampdetox": sampdetox_cfg}, indent=2))
    artifacts["defense"] = str(spec)
    example = np.asarray(example, dtype=np.uint8)
    # No input schema (see the module docstring): the contract is checked in predict, not by a silent cast.
    signature = ModelSignature(
        inputs=None,
        outputs=infer_signature(example, np.zeros(len(example), dtype=np.int64)).outputs,
        params=ParamSchema([ParamSpec("pixel_range", "string", "")]),
    )
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(MODEL_CODE),
        artifacts=artifacts,
        signature=signature,
        pip_requirements=_requirements(),
        registered_model_name=registered_model_name,
    )


def _requirements() -> list[str]:
    """Pins of what the model code imports (for non-local env managers; detoxops itself must be installed)."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("mlflow", "numpy", "torch", "safetensors", "diffusers", "pydantic", "scikit-image"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            pass
    return reqs


# Models from code: MLflow executes this file when it loads the model and serves what is set here.
mlflow.models.set_model(DetoxClassifier())
