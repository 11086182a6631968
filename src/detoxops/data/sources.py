"""Where labelled images come from: one entry point, :func:`load_source`, for every kind of source.

``source`` is one of

* ``"digits"`` — scikit-learn's bundled 8×8 digits (offline; values 0..16 scaled to 0..255), resized to
  ``cfg.image_size`` with PIL bilinear and made RGB; stratified ``test_fraction`` test split;
* ``"cifar10"`` / ``"gtsrb"`` — torchvision, downloaded into ``<cfg.root>/torchvision`` (needs network;
  :class:`SourceUnavailableError` says so when it is missing);
* a path: a stored dataset version (has ``version.json``), a class-folder directory or ``.tar.gz`` / ``.zip``
  archive (``train/`` + ``test/`` splits, or one tree that is split here), or an ``.npz`` of arrays.

Numpy arrays in memory go through :func:`from_arrays`. Every source ends with the same steps: the split into
``train`` / ``test`` where the source has none, then ``cfg.train_per_class`` / ``cfg.test_per_class``
stratified subsets (seed ``cfg.seed``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detoxops.data.archives import ARCHIVE_SUFFIXES, is_archive, iter_entries
from detoxops.data.folders import imagesets_from_entries
from detoxops.data.imageset import FORMAT_VERSION, ImageSet
from detoxops.data.limits import InputLimitError, default_limits, limit_error
from detoxops.data.sizes import AUTO, decide_image_size
from detoxops.data.splits import stratified_split, stratified_subset
from detoxops.data.store import is_version_dir, load_version
from detoxops.data.validate import ImagePolicy, normalise_array_images, normalise_labels, resize_images
from detoxops.fileio import atomic_dir

if TYPE_CHECKING:
    from detoxops.config import DataConfig

__all__ = [
    "BUILTIN_SOURCES",
    "SourceUnavailableError",
    "load_source",
    "load_splits",
    "from_arrays",
    "source_name",
    "resolve_image_size",
]

_log = logging.getLogger("detoxops.data")

BUILTIN_SOURCES = ("digits", "cifar10", "gtsrb")
WHOLE_SPLITS = ("train", "test", "val", "as-is")
"""Values of ``load_source(split=...)``: store a source whole (``as-is``: ``detoxops data ingest --no-split``)."""
CACHE_DIR = ".cache"
"""Folder under a versions root holding decoded archives (hidden: dataset names start with a letter/digit)."""


class SourceUnavailableError(RuntimeError):
    """A source that needs the network (torchvision download) could not be fetched."""


def _default_config() -> DataConfig:
    from detoxops.config import DataConfig

    return DataConfig()


def source_name(source: str | Path) -> str:
    """A short dataset name for a source: ``digits``, ``cifar10``, or the file / folder stem."""
    text = str(source)
    if text in BUILTIN_SOURCES:
        return text
    path = Path(text)
    if is_version_dir(path):
        return json.loads((path / "version.json").read_text()).get("name", path.parent.name)
    name = path.name
    for suffix in (*ARCHIVE_SUFFIXES, ".npz"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    clean = "".join(c if (c.isalnum() or c in "._-") else "-" for c in name).strip(".-") or "dataset"
    return clean


def load_source(
    source: str | Path,
    cfg: DataConfig | None = None,
    *,
    progress: bool = True,
    cache: bool = True,
    cache_root: str | Path | None = None,
    split: str | None = None,
) -> dict[str, ImageSet]:
    """``{"train": ImageSet, "test": ImageSet}`` (plus ``"val"`` where a folder source has one).

    ``split`` stores a source whole instead of imposing a train / test split: ``"train"`` / ``"test"`` /
    ``"val"`` keep a single class tree (or digits, or one-set ``.npz``) as that one split; ``"as-is"`` keeps a
    single tree as ``test`` and a source with its own splits exactly as they are. Under ``split`` a class may
    have no images (a triggered test set lacks the target class): it stays in ``class_names``.

    ``cache`` keeps the decoded contents of an archive under ``cache_root`` (default ``<cfg.root>/.cache``)
    keyed by the archive's sha256 and the image policy, so the next load of the same archive memory-maps the
    decoded arrays instead of decoding every image again.
    """
    cfg, size_note = resolve_image_size(source, cfg or _default_config())
    if size_note:
        _log.info(size_note)
    policy = ImagePolicy.from_config(cfg)
    if split is not None and split not in WHOLE_SPLITS:
        raise ValueError(f"split must be one of {', '.join(WHOLE_SPLITS)}, got {split!r}")
    text = str(source)
    if text == "digits":
        splits = _load_digits(policy)
    elif text in ("cifar10", "gtsrb"):
        splits = _load_torchvision(text, Path(cfg.root) / "torchvision", policy, progress)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            if "/" in text or "\\" in text or "." in text:
                raise FileNotFoundError(f"data source not found: {path}")
            raise ValueError(
                f"unknown data source {text!r}: expected {', '.join(BUILTIN_SOURCES)} or a path to a class-folder "
                "tree, a .tar.gz / .zip archive, an .npz file or a stored dataset version"
            )
        if path.is_dir() and is_version_dir(path):
            splits = _apply_policy(load_version(path), policy, progress)
        elif path.is_file() and path.name.lower().endswith(".npz"):
            splits = _load_npz(path, policy, cfg.limits)
        elif cache and split is None and path.is_file() and is_archive(path):
            root = Path(cache_root) if cache_root is not None else Path(cfg.root) / CACHE_DIR
            splits = _load_archive_cached(path, root, policy, progress, cfg.limits)
        else:
            splits = imagesets_from_entries(
                iter_entries(path, cfg.limits), str(path), policy, progress=progress,
                allow_missing_classes=split is not None, limits=cfg.limits,
            )
    return _finish(splits, cfg, split, text)


load_splits = load_source
"""Alias of :func:`load_source` (the name used in the data-layer issue)."""


def resolve_image_size(source: str | Path, cfg: DataConfig) -> tuple[DataConfig, str | None]:
    """``(cfg, why)``: ``cfg`` with ``image_size: auto`` replaced by the size the data decides
    (:mod:`detoxops.data.sizes`) and the sentence saying why; other values are returned as they are, with ``None``."""
    if cfg.image_size != AUTO:
        return cfg, None
    decision = decide_image_size(source, AUTO, cfg.limits)
    return cfg.model_copy(update={"image_size": decision.image_size}), decision.note


def _finish(
    splits: dict[str, ImageSet], cfg: DataConfig, whole: str | None = None, origin: str = ""
) -> dict[str, ImageSet]:
    """Split a single-set source into train/test (unless ``whole``, see :func:`load_source`), then apply the
    per-class subsets."""
    if whole is not None:
        if set(splits) == {"all"}:
            name = "test" if whole == "as-is" else whole
            splits = {name: _tag(splits["all"], name)}
        elif whole != "as-is":
            raise ValueError(
                f"{origin}: --split {whole} stores a single class-folder tree whole, but this source has its own "
                f"splits ({', '.join(sorted(splits))}); use --no-split to store them as they are"
            )
    elif "all" in splits:
        whole = splits.pop("all")
        train, test = stratified_split(whole, cfg.test_fraction, cfg.seed)
        splits = {"train": _tag(train, "train"), "test": _tag(test, "test"), **splits}
    elif "test" not in splits:
        train, test = stratified_split(splits["train"], cfg.test_fraction, cfg.seed)
        splits = {**splits, "train": _tag(train, "train"), "test": _tag(test, "test")}
    if cfg.train_per_class is not None and "train" in splits:
        splits["train"] = stratified_subset(splits["train"], cfg.train_per_class, cfg.seed)
    if cfg.test_per_class is not None and "test" in splits:
        splits["test"] = stratified_subset(splits["test"], cfg.test_per_class, cfg.seed)
    return splits


def _tag(ds: ImageSet, split: str) -> ImageSet:
    ds.meta["split"] = split
    return ds


def _apply_policy(splits: dict[str, ImageSet], policy: ImagePolicy, progress: bool) -> dict[str, ImageSet]:
    """A stored version is already uint8 RGB; only a different ``image_size`` needs work (a resized copy)."""
    size = policy.image_size
    out = {}
    for split, ds in splits.items():
        if size is not None and ds.image_shape[:2] != (size, size):
            ds = ds.replace(images=resize_images(np.asarray(ds.images), int(size), progress)).with_transform(
                {"op": "resize", "size": int(size), "filter": "bilinear"}
            )
        out[split] = ds
    return out


# --------------------------------------------------------------------------------------- arrays
def from_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str] | None = None,
    *,
    image_size: int | None = None,
    color: str = "rgb",
    meta: dict[str, Any] | None = None,
) -> ImageSet:
    """An ``ImageSet`` from numpy arrays, validated and normalised.

    ``images``: NHWC or NHW; uint8, integers in [0, 255], or floats in [0, 1] (NaN / inf are errors); 1, 3 or
    4 channels (converted to RGB under ``color="rgb"``). ``labels``: integers in ``[0, len(class_names))``;
    without ``class_names`` the classes are ``"0" … str(max label)``.
    """
    policy = ImagePolicy(image_size=image_size, color=color)  # type: ignore[arg-type]
    pixels = normalise_array_images(images, policy)
    raw_labels = np.asarray(labels)
    if class_names is None:
        if raw_labels.size == 0 or not np.issubdtype(raw_labels.dtype, np.integer):
            normalise_labels(raw_labels, pixels.shape[0], 1)  # raises the precise dtype / shape error
        class_names = [str(i) for i in range(int(raw_labels.max()) + 1 if raw_labels.size else 1)]
    label_arr = normalise_labels(raw_labels, pixels.shape[0], len(class_names))
    info = {"source": "arrays", "policy": policy.describe(), "transforms": []}
    info.update(meta or {})
    return ImageSet(images=pixels, labels=label_arr, class_names=list(class_names), meta=info)


def _load_npz(path: Path, policy: ImagePolicy, limits=None) -> dict[str, ImageSet]:
    """``images`` + ``labels`` (one set) or ``train_images`` / ``train_labels`` / ``test_…`` (splits);
    optional ``class_names``. Loaded without pickle; every array's header is checked against ``limits`` before
    the array is inflated (an .npz member is a compressed .npy: a few kB can declare gigabytes)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                _check_npy_header(npz.zip, key, str(path), limits or default_limits())
            arrays = {k: npz[k] for k in npz.files}
    except InputLimitError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: unreadable .npz ({exc})") from None
    names = [str(c) for c in arrays["class_names"]] if "class_names" in arrays else None
    prefixes = [p for p in ("train", "test", "val") if f"{p}_images" in arrays]
    groups = {p: (f"{p}_images", f"{p}_labels") for p in prefixes} or {"all": ("images", "labels")}
    if names is None:  # one class list for all splits
        all_labels = [arrays[lab] for _, lab in groups.values() if lab in arrays]
        if all_labels and all(np.issubdtype(a.dtype, np.integer) and a.size for a in all_labels):
            names = [str(i) for i in range(int(max(a.max() for a in all_labels)) + 1)]
    out = {}
    for split, (img_key, lab_key) in groups.items():
        for key in (img_key, lab_key):
            if key not in arrays:
                raise ValueError(f"{path}: missing array {key!r} (found {sorted(arrays)})")
        try:
            out[split] = from_arrays(
                arrays[img_key],
                arrays[lab_key],
                names,
                image_size=policy.image_size,
                color=policy.color,
                meta={"source": str(path), "split": split},
            )
        except ValueError as exc:
            raise ValueError(f"{path}: {split}: {exc}") from None
    return out


def _check_npy_header(archive, key: str, where: str, limits) -> None:
    """Shape and dtype of ``<key>.npy`` from its header; refuse one whose size is over ``limits``."""
    with archive.open(f"{key}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fh)
    count = int(np.prod(shape, dtype=object)) if shape else 1
    name = f"{where}: array {key!r} {tuple(shape)} {dtype}"
    if shape and shape[0] > limits.dataset_images:
        raise limit_error(name, "its number of rows (images)", int(shape[0]), "dataset_images", limits.dataset_images)
    if key.endswith("images") and len(shape) >= 3:
        if shape[1] * shape[2] > limits.image_pixels:
            raise limit_error(name, "the size of each image in pixels", int(shape[1] * shape[2]), "image_pixels",
                              limits.image_pixels)
        if int(np.prod(shape[:3], dtype=object)) > limits.dataset_pixels:
            raise limit_error(name, "its number of pixels", int(np.prod(shape[:3], dtype=object)), "dataset_pixels",
                              limits.dataset_pixels)
    if count > 4 * limits.dataset_pixels:  # no array may hold more values than the largest RGBA dataset
        raise limit_error(name, "its number of values / 4", count // 4, "dataset_pixels", limits.dataset_pixels)


# --------------------------------------------------------------------------------------- digits
def _load_digits(policy: ImagePolicy) -> dict[str, ImageSet]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8), values 0..16
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    if policy.image_size is not None:
        rgb = resize_images(rgb, int(policy.image_size))
    meta = {"source": "digits", "policy": policy.describe(), "transforms": []}
    ds = ImageSet(images=rgb, labels=digits.target, class_names=[str(i) for i in range(10)], meta=meta)
    return {"all": ds}


# ---------------------------------------------------------------------------------- torchvision
def _load_torchvision(name: str, root: Path, policy: ImagePolicy, progress: bool) -> dict[str, ImageSet]:
    from torchvision import datasets

    label = {"cifar10": "CIFAR-10", "gtsrb": "GTSRB"}[name]
    try:
        if name == "cifar10":
            raw = {
                s: datasets.CIFAR10(str(root), train=(s == "train"), download=True) for s in ("train", "test")
            }
        else:
            raw = {s: datasets.GTSRB(str(root), split=s, download=True) for s in ("train", "test")}
    except (
        OSError,
        RuntimeError,
    ) as exc:  # URLError is an OSError; torchvision raises RuntimeError on bad files
        raise SourceUnavailableError(
            f"cannot download {label} via torchvision into {root}: {type(exc).__name__}: {exc}. The network is "
            f"probably unreachable; download it where there is network, or point data.source at a local "
            f"class-folder tree, .tar.gz / .zip archive or stored dataset version"
        ) from exc
    out = {}
    if name == "cifar10":
        for split, ds in raw.items():
            images = np.asarray(ds.data, dtype=np.uint8)
            if policy.image_size is not None:
                images = resize_images(images, int(policy.image_size), progress)
            meta = {"source": "cifar10", "split": split, "policy": policy.describe(), "transforms": []}
            out[split] = ImageSet(
                images=images, labels=np.asarray(ds.targets), class_names=list(ds.classes), meta=meta
            )
        return out
    # GTSRB: images of varying size stored as files; decode them with the same policy as folder sources.
    from detoxops.data.archives import Entry

    for split, ds in raw.items():
        samples = list(ds._samples)
        entries = (
            Entry(f"{split}/{int(lab):05d}/{Path(p).name}", Path(p).read_bytes()) for p, lab in samples
        )
        out.update(imagesets_from_entries(entries, f"gtsrb:{split}", policy, progress, total=len(samples)))
    names = sorted(set(out["train"].class_names) | set(out["test"].class_names))
    if out["train"].class_names != names or out["test"].class_names != names:
        raise ValueError("gtsrb: train and test splits have different classes")
    for split in out:
        out[split].meta.update({"source": "gtsrb", "split": split})
    return out


# -------------------------------------------------------------------------------------- caching
def _load_archive_cached(
    path: Path, cache_root: Path, policy: ImagePolicy, progress: bool, limits=None
) -> dict[str, ImageSet]:
    """Decode an archive once; later loads memory-map the decoded splits."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    key = hashlib.sha256(
        json.dumps(
            {"archive": digest.hexdigest(), "policy": policy.describe(), "format": FORMAT_VERSION},
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    folder = cache_root / f"{source_name(path)}-{key}"
    index = folder / "splits.json"
    if index.is_file():
        try:
            names = json.loads(index.read_text())
            splits = {s: ImageSet.load(folder / s, mmap=True) for s in names}
            for ds in splits.values():  # record where the data really came from
                ds.meta["source"] = str(path)
                ds.meta["cache"] = str(folder)
            return splits
        except (OSError, ValueError):
            pass  # damaged cache: decode again below and replace it
    splits = imagesets_from_entries(iter_entries(path, limits), str(path), policy, progress=progress, limits=limits)
    try:
        with atomic_dir(folder, overwrite=True) as tmp:
            for s, ds in splits.items():
                ds.write_into(tmp / s)
            (tmp / "splits.json").write_text(json.dumps(sorted(splits)))
    except OSError:
        pass  # the cache is an optimisation: an unwritable cache root must not fail the load
    return splits
