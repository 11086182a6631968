"""An MLflow pyfunc model "detox + classifier": SampDetox in front of the victim, served with
``mlflow models serve -m models:/detoxops-guard@champion --env-manager local``.

The artifacts are folders of safetensors weights (classifier via ``detoxops.models.save_classifier``,
purifier as a diffusers folder) and a JSON defense config; MLflow itself stores this class with cloudpickle
(``python_model.pkl``, our own code, not user data). Input: uint8 images (N, H, W, 3) as nested lists
(``{"inputs": …}``); output: int64 labels (N,).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

__all__ = ["DetoxClassifier", "log_guard_model"]


class DetoxClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from detoxops.config import SampDetoxConfig
        from detoxops.defenses.catalog import build_defense
        from detoxops.defenses.guard import Detoxifier
        from detoxops.diffusion import load_purifier
        from detoxops.models import load_classifier

        spec = json.loads(Path(context.artifacts["defense"]).read_text())
        classifier = load_classifier(context.artifacts["classifier"]).eval()
        purifier = load_purifier(context.artifacts["purifier"]) if spec["defense"] != "none" else None
        cfg = SampDetoxConfig(**spec["sampdetox"])
        self.guard = Detoxifier(classifier, build_defense(spec["defense"], purifier, cfg), batch_size=cfg.batch_size)

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        images = np.asarray(model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images (N, H, W, 3), got shape {images.shape}")
        if images.min() < 0 or images.max() > 255:
            raise ValueError("expected uint8 pixel values in [0, 255]")
        return self.guard.predict(images.astype(np.uint8))


def log_guard_model(classifier_dir: str, purifier_dir: str, defense: str, sampdetox_cfg: dict, example: np.ndarray, workdir: Path):
    """Log the guard on the active run; returns MLflow's ModelInfo."""
    from mlflow.models import infer_signature

    workdir.mkdir(parents=True, exist_ok=True)
    spec = workdir / "defense.json"
    spec.write_text(json.dumps({"defense": defense, "sampdetox": sampdetox_cfg}, indent=2))
    signature = infer_signature(example.astype(np.uint8), np.zeros(len(example), dtype=np.int64))
    return mlflow.pyfunc.log_model(
        name="guard",
        python_model=DetoxClassifier(),
        artifacts={"classifier": classifier_dir, "purifier": purifier_dir, "defense": str(spec)},
        signature=signature,
        code_paths=[str(Path(__file__).resolve().parent)],
        pip_requirements=[],
    )
