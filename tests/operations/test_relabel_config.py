"""``operations.relabel_config``: DataElixir's relabelling model trains for ``dataelixir.relabel_epochs`` epochs
whichever recipe the victim uses (the airbench recipe of ``fast_cnn`` counts its epochs in ``victim.airbench``)."""

from __future__ import annotations

import numpy as np

from detoxops.config import DataElixirConfig, Params, VictimConfig
from detoxops.data import ImageSet
from detoxops.models import build_classifier, train_classifier
from detoxops.operations import relabel_config


def test_fast_cnn_relabel_model_trains_for_relabel_epochs():
    params = Params(victim=VictimConfig(arch="fast_cnn", seed=3), dataelixir=DataElixirConfig(relabel_epochs=2))
    cfg = relabel_config(params)
    assert cfg.training_recipe == "airbench"
    assert cfg.airbench.epochs == 2.0 and cfg.epochs == 2
    # the rest of the victim's recipe is kept
    assert cfg.airbench.lr == params.victim.airbench.lr and cfg.seed == 3
    assert params.victim.airbench.epochs == 9.9  # the victim's own config is not changed

    rng = np.random.default_rng(0)
    data = ImageSet(images=rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8),
                    labels=np.repeat(np.arange(4), 10), class_names=[str(i) for i in range(4)])
    model = build_classifier("fast_cnn", 4, 3, 16, seed=cfg.seed, widths=cfg.airbench.widths)
    history = train_classifier(model, data, cfg.model_copy(update={"airbench": cfg.airbench.model_copy(
        update={"batch_size": 20, "whiten_images": 40})}), progress=False)
    assert history["epoch"] == [1, 2]


def test_small_cnn_relabel_model_keeps_its_recipe():
    params = Params(victim=VictimConfig(arch="small_cnn", width=4, lr=0.05), dataelixir=DataElixirConfig(relabel_epochs=7))
    cfg = relabel_config(params)
    assert cfg.training_recipe == "backdoorbench" and cfg.epochs == 7 and cfg.lr == 0.05 and cfg.width == 4
