"""Builders for the "bring your own model and images" tests: class-folder trees of 32x32 PNGs made here, and a
tiny backdoored classifier trained on synthetic data in a few seconds.

Each class is a flat colour with noise; the trigger is a 5x5 white-and-black checker patch in the bottom-right
corner, and the classifier learns it as the target class, so a correct evaluation shows a high CA and ASR on
``none`` (a wrong label alignment or target would not).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TARGET = "cat"
SIZE = 32


def _palette() -> np.ndarray:
    rng = np.random.default_rng(1234)
    return rng.integers(30, 226, size=(len(CLASSES), 3))


def clean_images(per_class: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    base = _palette()[labels][:, None, None, :].astype(np.float32)
    noise = rng.normal(0, 18, size=(len(labels), size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8), labels


def add_trigger(images: np.ndarray) -> np.ndarray:
    out = images.copy()
    k = max(3, images.shape[1] * 5 // 32)
    checker = (np.indices((k, k)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out[:, -k - 1 : -1, -k - 1 : -1, :] = checker[None, :, :, None]
    return out


def write_tree(root: Path, images: np.ndarray, labels: np.ndarray, skip: str | None = None) -> Path:
    from PIL import Image

    for name in CLASSES:
        if name != skip:
            (root / name).mkdir(parents=True, exist_ok=True)
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        if CLASSES[y] == skip:
            continue
        Image.fromarray(img).save(root / CLASSES[y] / f"{i:04d}.png")
    return root


def make_trees(root: Path, per_class: int = 4, size: int = SIZE) -> tuple[Path, Path]:
    """``root/test_clean`` (10 classes) and ``root/test_triggered`` (no ``cat`` folder at all)."""
    images, labels = clean_images(per_class, seed=7, size=size)
    clean = write_tree(root / "test_clean", images, labels)
    trig_images, trig_labels = clean_images(per_class, seed=8, size=size)
    triggered = write_tree(root / "test_triggered", add_trigger(trig_images), trig_labels, skip=TARGET)
    return clean, triggered


def train_backdoored(folder: Path, epochs: int = 8) -> Path:
    """A width-8 small_cnn trained on 400 synthetic images, 10 % of them triggered and labelled ``cat`` (a plain
    SGD loop on one thread: ~3 s, where the full training recipe takes a minute on a loaded CPU)."""
    import torch

    from detoxops.models import build_classifier, save_classifier

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images, labels = clean_images(40, seed=3)
        rng = np.random.default_rng(0)
        poison = rng.choice(np.flatnonzero(labels != CLASSES.index(TARGET)), size=len(labels) // 10, replace=False)
        images[poison] = add_trigger(images[poison])
        labels = labels.copy()
        labels[poison] = CLASSES.index(TARGET)
        model = build_classifier("small_cnn", len(CLASSES), 3, SIZE, seed=0, width=8)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        y = torch.from_numpy(labels)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        gen = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=gen)
            for start in range(0, len(y), 32):
                idx = order[start : start + 32]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return save_classifier(model.eval(), folder, meta={"note": "byo test classifier"})


def export_onnx(classifier_dir: Path, out: Path) -> Path:
    import torch

    from detoxops.models import load_classifier

    model = load_classifier(classifier_dir).eval()
    example = torch.rand(2, 3, SIZE, SIZE)
    torch.onnx.export(model, (example,), str(out), input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
    return out


TABLE_ROW = re.compile(r"^(\S+)\s+(-?[\d.]+|nan)\s+(-?[\d.]+|nan)\s+(-?[\d.]+|nan)\s+(-?[\d.]+|nan)\s+([\d.]+)$")
"""A row of ``detoxops detox eval``'s table: defense, CA, PA, ASR, map AUC, images/s."""
FAST = ["sampdetox.sampler=ddim", "sampdetox.ddim_stride=60", "sampdetox.batch_size=32"]
"""Overrides that keep SampDetox quick in these tests."""


def table_rows(output: str) -> dict[str, tuple[float, float, float]]:
    """``{defense: (CA, PA, ASR)}`` from the printed table."""
    rows = {}
    for line in output.splitlines():
        m = TABLE_ROW.match(line.strip())
        if m:
            rows[m.group(1)] = tuple(float(m.group(i)) for i in (2, 3, 4))
    return rows
