"""Class-folder trees → ``ImageSet`` splits.

Two layouts are recognised, optionally below one common wrapper folder (``cifar10/train/cat/1.jpg``):

* split layout ``<split>/<class>/<image>`` with ``split`` in ``train`` / ``test`` (``val`` too, if present);
* single tree ``<class>/<image>`` — returned as one ``"all"`` split, to be split by the caller.

Class names are the sorted folder names (so label ``i`` is the ``i``-th name, as in torchvision's
``ImageFolder``); within a split, samples are ordered by (class, path), and ``source_index`` is the position
in that order — independent of the order of members in an archive. Hidden files and files without an image
suffix (README, .DS_Store) are skipped and counted in ``meta["skipped_files"]``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from detoxops.data.archives import Entry
from detoxops.data.imageset import ImageSet
from detoxops.data.limits import default_limits, limit_error
from detoxops.data.validate import IMAGE_SUFFIXES, ImagePolicy, check_same_size, decode_image

if TYPE_CHECKING:
    from detoxops.config import DataLimits

__all__ = ["SPLIT_NAMES", "imagesets_from_entries"]

SPLIT_NAMES = ("train", "test", "val")
LAYOUTS = (f"expected <class>/<image> (one tree, split here) or <split>/<class>/<image> with <split> one of "
           f"{', '.join(SPLIT_NAMES)} (train required), optionally below one wrapper folder")


def imagesets_from_entries(
    entries: Iterable[Entry],
    origin: str,
    policy: ImagePolicy,
    progress: bool = True,
    total: int | None = None,
    *,
    allow_missing_classes: bool = False,
    limits: DataLimits | None = None,
) -> dict[str, ImageSet]:
    """Decode every image in ``entries`` (one pass) and group them into splits and classes.

    ``allow_missing_classes`` keeps an empty class folder, or a class that some split lacks, as a class with no
    images (a triggered test set has none of the attack's target class) instead of raising.
    ``limits`` (default :class:`detoxops.config.DataLimits`): ``image_pixels`` per image (from its header, before
    decoding), ``dataset_images`` and ``dataset_pixels`` (kept, after resizing) over the whole tree.
    """
    limits = limits if limits is not None else default_limits()
    kept_pixels = 0
    files: dict[tuple[str, ...], object] = {}
    dirs: set[tuple[str, ...]] = set()
    skipped = 0
    bar = tqdm(
        entries,
        desc=f"decode {PurePosixPath(origin).name}",
        unit="file",
        total=total,
        disable=not progress,
        mininterval=0.5,
    )
    for entry in bar:
        parts = tuple(entry.path.split("/"))
        if any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue
        if entry.is_dir:
            dirs.add(parts)
            continue
        if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
            skipped += 1
            continue
        if parts in files:
            raise ValueError(f"{origin}: duplicate member {entry.path!r}")
        if len(files) >= limits.dataset_images:
            raise limit_error(origin, "the number of images (at least)", len(files) + 1, "dataset_images",
                              limits.dataset_images)
        decoded_image = decode_image(entry.data, f"{origin}: {entry.path}", policy, max_pixels=limits.image_pixels)
        kept_pixels += decoded_image.pixels.shape[0] * decoded_image.pixels.shape[1]
        if kept_pixels > limits.dataset_pixels:
            raise limit_error(origin, "the number of pixels kept (at least, after resizing)", kept_pixels,
                              "dataset_pixels", limits.dataset_pixels)
        files[parts] = decoded_image
        for depth in range(1, len(parts)):  # archives may list files without their folders
            dirs.add(parts[:depth])
    if not files:
        raise ValueError(
            f"{origin}: no images found (expected class folders: <class>/<image> or train/<class>/<image>, "
            f"test/<class>/<image>)"
        )

    prefix, split_layout = _detect_layout(list(files), origin)
    depth = len(prefix) + (2 if split_layout else 1)  # path length of a class folder

    # Class folders, including empty ones (listed as folder entries but holding no image).
    class_dirs: dict[str, set[str]] = {}
    for d in dirs:
        if len(d) == depth and d[: len(prefix)] == prefix:
            split = d[len(prefix)] if split_layout else "all"
            if split_layout and split not in SPLIT_NAMES:
                continue
            class_dirs.setdefault(split, set()).add(d[-1])
    by_split: dict[str, dict[str, list[tuple[str, ...]]]] = {}
    for parts in files:
        split = parts[len(prefix)] if split_layout else "all"
        by_split.setdefault(split, {}).setdefault(parts[-2], []).append(parts)
    if split_layout and "train" not in by_split:
        raise ValueError(
            f"{origin}: split layout without a train/ folder (found {', '.join(s + '/' for s in sorted(by_split))}); "
            f"recognised split names: {', '.join(SPLIT_NAMES)}, train required"
        )

    class_names = sorted(
        {c for classes in by_split.values() for c in classes} | {c for s in class_dirs.values() for c in s}
    )
    for split in sorted(class_dirs):  # a folder that exists but holds no image
        for name in sorted(class_dirs[split]):
            if not by_split.get(split, {}).get(name) and not allow_missing_classes:
                where = "/".join((*prefix, *((split,) if split_layout else ()), name))
                raise ValueError(
                    f"{origin}: empty class folder {where!r} (no images in it; to keep it as a class without "
                    "images, e.g. the target class of triggered test images, ingest with --split test or "
                    "--no-split, or pass the folder to `detoxops detox eval --triggered`)"
                )
    for split in sorted(by_split):  # a class that some other split has but this one lacks entirely
        missing = [name for name in class_names if not by_split[split].get(name)]
        if missing and not allow_missing_classes:
            raise ValueError(
                f"{origin}: class {missing[0]!r} has no images in split {split!r} (every split needs every class; "
                "a set that lacks classes on purpose, such as triggered test images, is ingested alone with "
                "--split test or --no-split, or passed as is to `detoxops detox eval --triggered`)"
            )

    decoded = list(files.values())
    names = ["/".join(p) for p in files]
    if policy.image_size is None:
        check_same_size([d.size for d in decoded], names, origin)
    label_of = {name: i for i, name in enumerate(class_names)}
    out: dict[str, ImageSet] = {}
    for split, classes in by_split.items():
        ordered = sorted(
            (p for members in classes.values() for p in members), key=lambda p: (label_of[p[-2]], p)
        )
        images = np.stack([files[p].pixels for p in ordered])
        labels = np.fromiter((label_of[p[-2]] for p in ordered), dtype=np.int64, count=len(ordered))
        meta = {
            "source": origin,
            "split": split,
            "policy": policy.describe(),
            "skipped_files": skipped,
            "transforms": [],
        }
        out[split] = ImageSet(images=images, labels=labels, class_names=class_names, meta=meta)
    return out


def _detect_layout(paths: list[tuple[str, ...]], origin: str) -> tuple[tuple[str, ...], bool]:
    """Return (common wrapper prefix, is split layout)."""
    if all(len(p) >= 3 and p[-3] in SPLIT_NAMES for p in paths):
        prefixes = {p[:-3] for p in paths}
        if len(prefixes) == 1:
            return prefixes.pop(), True
    if all(len(p) >= 2 for p in paths):
        prefixes = {p[:-2] for p in paths}
        if len(prefixes) == 1:
            return prefixes.pop(), False
    loose = next((p for p in paths if len(p) < 2), None)
    if loose is not None:
        raise ValueError(f"{origin}: image {'/'.join(loose)!r} is not inside a class folder ({LAYOUTS})")
    common = _common_prefix(paths)
    if all(len(p) == len(common) + 3 for p in paths):  # <folder>/<class>/<image> under one prefix
        found = Counter(p[len(common)] for p in paths)
        unknown = sorted(name for name in found if name not in SPLIT_NAMES)
        where = "/".join(common) + "/" if common else ""
        listed = ", ".join(f"{where}{name}/ ({n} images)" for name, n in sorted(found.items()))
        raise ValueError(
            f"{origin}: split folders not recognised: {', '.join(repr(u) for u in unknown)}. Found {listed}. "
            f"Recognised split names: {', '.join(SPLIT_NAMES)} (train required): rename them (e.g. test_clean/ "
            "-> test/), or ingest a set that is not a split on its own (`detoxops data ingest "
            f"{where}{unknown[0]} --split test`)"
        )
    first_at_depth: dict[int, tuple[str, ...]] = {}
    for p in sorted(paths):
        first_at_depth.setdefault(len(p), p)
    by_depth = sorted(first_at_depth.items())
    shallow, deep = by_depth[0][1], by_depth[-1][1]
    raise ValueError(
        f"{origin}: images at {len(by_depth)} different folder depths (e.g. {'/'.join(shallow)!r} and "
        f"{'/'.join(deep)!r}); {LAYOUTS}"
    )


def _common_prefix(paths: list[tuple[str, ...]]) -> tuple[str, ...]:
    """The longest folder path every image lies under."""
    first = paths[0][:-1]
    n = len(first)
    for p in paths[1:]:
        n = min(n, len(p) - 1)
        while n and p[:n] != first[:n]:
            n -= 1
    return first[:n]
