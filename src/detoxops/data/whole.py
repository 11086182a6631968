"""Read one labelled image set whole, as it is: an evaluation set made elsewhere.

:func:`read_whole` takes what a user has at hand and returns one :class:`ImageSet`, with no train / test split
imposed and no class required to have images (triggered test images have none of the attack's target class):

* a saved ``ImageSet`` folder (``meta.json`` + ``images.npy``, e.g. ``<version>/test``);
* a stored dataset version (``version.json``): its only split, else the split named by ``split`` (default
  ``test``);
* a class-folder tree ``<class>/<image>`` or a ``.tar.gz`` / ``.zip`` archive of one, read whole; a tree with
  ``train/`` and ``test/`` folders gives its ``split`` (default ``test``);
* an ``.npz`` with ``images`` and ``labels`` (optional ``class_names``), loaded without pickle.

Images keep their size. A folder whose images differ in size is refused with two of the sizes named, unless
``mixed_size_to`` says which size to bring them to. Class names are the folder names, sorted (label ``i`` is the
``i``-th name, as in ``torchvision``'s ``ImageFolder``); :func:`align_classes` maps a set onto another class
list by name, so a triggered tree that lacks a class keeps the labels the model uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detoxops.data.archives import is_archive, iter_entries
from detoxops.data.folders import imagesets_from_entries
from detoxops.data.imageset import ImageSet
from detoxops.data.store import is_version_dir, load_version
from detoxops.data.validate import ImagePolicy

__all__ = ["read_whole", "align_classes"]


def read_whole(
    path: str | Path,
    *,
    split: str | None = None,
    mixed_size_to: int | None = None,
    progress: bool = True,
    limits=None,
) -> ImageSet:
    """One set, whole (see the module docstring). ``meta["origin"]`` records what was read. ``limits``: the
    untrusted-input bounds of a folder / archive (default :class:`detoxops.config.DataLimits`)."""
    src = Path(path).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"image set not found: {src}")
    if src.is_dir() and (src / "meta.json").is_file():
        ds = ImageSet.load(src)
        origin = f"ImageSet {src}"
    elif src.is_dir() and is_version_dir(src):
        splits = load_version(src)
        ds, which = _pick_split(splits, split, str(src))
        origin = f"dataset version {src}, split {which}"
    elif src.is_file() and src.name.lower().endswith(".npz"):
        ds = _read_npz(src)
        origin = f"arrays {src}"
    elif src.is_dir() or (src.is_file() and is_archive(src)):
        splits = _decode_tree(src, mixed_size_to, progress, limits)
        if set(splits) == {"all"}:
            ds, which = splits["all"], None
        else:
            ds, which = _pick_split(splits, split, str(src))
        kind = "archive" if src.is_file() else "class-folder tree"
        origin = f"{kind} {src}" + (f", split {which}" if which else "")
    else:
        raise ValueError(
            f"{src}: not an image set (expected a class-folder tree <class>/<image>, a .tar.gz / .zip archive of "
            "one, a saved ImageSet folder, a stored dataset version or an .npz of images and labels)"
        )
    if len(ds) == 0:
        raise ValueError(f"{src}: no images")
    ds.meta["origin"] = origin
    return ds


def align_classes(ds: ImageSet, class_names: list[str], what: str = "images") -> ImageSet:
    """``ds`` with its labels re-expressed in ``class_names`` (matched by name), which becomes its class list.

    A class of ``ds`` that ``class_names`` lacks is an error naming it; classes of ``class_names`` that ``ds``
    lacks are fine (a triggered set has no target-class images).
    """
    names = [str(c) for c in class_names]
    if list(ds.class_names) == names:
        return ds
    index = {name: i for i, name in enumerate(names)}
    used = set(np.unique(ds.labels).tolist()) | set(np.unique(ds.original_labels).tolist())
    unknown = [c for i, c in enumerate(ds.class_names) if c not in index and i in used]
    if unknown:
        raise ValueError(
            f"{what}: class {unknown[0]!r} is not one of the model's classes ({', '.join(names)}); class "
            "folders must be named as the clean set's (or the model's) classes"
        )
    mapping = np.array([index.get(c, -1) for c in ds.class_names], dtype=np.int64)
    return ImageSet(
        images=ds.images,
        labels=mapping[ds.labels],
        class_names=names,
        source_index=ds.source_index,
        original_labels=mapping[ds.original_labels],
        poisoned=ds.poisoned,
        meta={**ds.meta, "class_names_before_alignment": list(ds.class_names)},
    )


def _pick_split(splits: dict[str, ImageSet], split: str | None, origin: str) -> tuple[ImageSet, str]:
    if split is None:
        if len(splits) == 1:
            return next(iter(splits.values())), next(iter(splits))
        split = "test"
    if split not in splits:
        raise ValueError(f"{origin}: no split {split!r} (it has {', '.join(sorted(splits))})")
    return splits[split], split


def _decode_tree(src: Path, mixed_size_to: int | None, progress: bool, limits) -> dict[str, ImageSet]:
    def decode(size: int | None) -> dict[str, ImageSet]:
        return imagesets_from_entries(
            iter_entries(src, limits), str(src), ImagePolicy(image_size=size), progress=progress,
            allow_missing_classes=True, limits=limits,
        )

    try:
        return decode(None)
    except ValueError as exc:
        if mixed_size_to is None or "mixed image sizes" not in str(exc):
            raise
    splits = decode(int(mixed_size_to))
    for ds in splits.values():
        ds.meta["resized_mixed_sizes_to"] = int(mixed_size_to)
    return splits


def _read_npz(path: Path) -> ImageSet:
    from detoxops.data.sources import from_arrays

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: unreadable .npz ({exc})") from None
    for key in ("images", "labels"):
        if key not in arrays:
            raise ValueError(f"{path}: missing array {key!r} (found {sorted(arrays)})")
    names = [str(c) for c in arrays["class_names"]] if "class_names" in arrays else None
    try:
        return from_arrays(arrays["images"], arrays["labels"], names, meta={"source": str(path)})
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
