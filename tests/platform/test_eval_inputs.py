"""One rule for what an evaluation scores (``detoxops.defenses.evaluation.eval_inputs``): the flows' detox-eval task
(demo, detox, sanitize, benchmark) reports on the same held-out images as ``detoxops detox score --split test``, the
``detox_eval`` stage and the sweep's points (``operations.evaluate_split``), with the same ``--max-images`` sample."""

from __future__ import annotations

import numpy as np
import pytest

from detoxops.config import DataConfig, ScheduleConfig, UNetConfig, load_params
from detoxops.data import ImageSet, save_version
from detoxops.diffusion import NoiseSchedule, Purifier, build_unet, save_purifier
from detoxops.models import build_classifier, save_classifier

pytestmark = pytest.mark.platform


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory) -> dict:
    from tasks.attack_tasks import poison_dataset

    root = tmp_path_factory.mktemp("eval-inputs")
    rng = np.random.default_rng(0)

    def split(n_per_class: int) -> ImageSet:
        labels = np.repeat(np.arange(3), n_per_class).astype(np.int64)
        return ImageSet(rng.integers(0, 256, (len(labels), 8, 8, 3), dtype=np.uint8), labels, ["a", "b", "c"])

    clean = save_version({"train": split(10), "test": split(12)}, root / "data", "toy", source="test")
    attack_cfg = load_params(None, ["attack.name=badnets", "attack.target=0"]).attack.model_dump(mode="json")
    version = poison_dataset.fn(str(clean), attack_cfg, str(root / "data"))["path"]
    save_classifier(build_classifier("small_cnn", 3, image_size=8, width=4), root / "victim")  # untrained: varied
    save_purifier(Purifier(build_unet(UNetConfig(sample_size=8, block_out_channels=[8, 16])),
                           NoiseSchedule.from_config(ScheduleConfig())), root / "purifier")
    return {"root": root, "version": version, "attack_cfg": attack_cfg, "victim": str(root / "victim"),
            "purifier": str(root / "purifier")}


@pytest.mark.parametrize("max_images", [None, 7])
def test_flow_task_scores_the_held_out_images_the_cli_and_the_sweep_score(poisoned, max_images):
    from tasks.detox_tasks import evaluate_defenses_task
    from tasks.sweep_tasks import evaluate_point_fn

    sampdetox_cfg = load_params(None).sampdetox.model_dump(mode="json")
    data_cfg = DataConfig(val_fraction=0.5, seed=3).model_dump(mode="json")
    flow_row = evaluate_defenses_task.fn(poisoned["version"], poisoned["victim"], poisoned["purifier"], ["none"],
                                         sampdetox_cfg, poisoned["attack_cfg"], max_images,
                                         str(poisoned["root"] / f"samples-{max_images}"), data_cfg)[0]
    cli_row = evaluate_point_fn(poisoned["version"], poisoned["victim"], None, poisoned["attack_cfg"], sampdetox_cfg,
                                "none", "test", 0.5, 3, max_images)
    keys = ("ca", "pa", "asr", "n_clean", "n_poisoned")
    assert {k: flow_row[k] for k in keys} == {k: cli_row[k] for k in keys}  # fractions, both
    assert all(0.0 <= flow_row[k] <= 1.0 for k in ("ca", "pa", "asr"))
    # the held-out half (18 of 36 clean test images), capped at max_images
    assert flow_row["n_clean"] == (18 if max_images is None else 7)
