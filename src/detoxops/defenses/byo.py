"""Bring your own model and images: turn a clean set, a triggered set and a model made elsewhere into an
:class:`~detoxops.defenses.evaluation.EvalSet`, saying what was done to them.

The rules (docs/byo.md):

* both sets are read whole (:func:`detoxops.data.whole.read_whole`): a class-folder tree, an archive, a saved
  ImageSet, a stored version or an ``.npz``; no split is imposed;
* labels follow the model's class names where it declares them, else the clean set's (sorted folder names);
  the triggered set is matched **by name**, so it may lack any class; a model whose number of outputs differs
  from the number of classes is refused, naming both;
* the target is an index or a class name; without one it is the one class the triggered set has no image of;
* triggered images whose true class is the target are dropped (ASR is measured on non-target images), and the
  count is reported;
* every image is brought to the model's input size (PIL bilinear), with a note, unless ``resize=False``, which
  refuses and names the sizes; a diffusion purifier must work at that size too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detoxops.data.imageset import ImageSet
from detoxops.data.validate import resize_images
from detoxops.data.whole import align_classes, read_whole
from detoxops.defenses.evaluation import EvalSet

__all__ = ["ByoEval", "prepare_byo", "resolve_target", "byo_defenses"]


@dataclass
class ByoEval:
    data: EvalSet
    class_names: list[str]
    target: int
    image_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)
    dropped_target_images: int = 0
    clean_origin: str = ""
    triggered_origin: str = ""

    @property
    def target_name(self) -> str:
        return self.class_names[self.target]


def resolve_target(target: int | str | None, class_names: list[str], missing: list[int]) -> tuple[int, str]:
    """``(index, how)`` for ``--target``: a class name, else an index; None = the one class in ``missing``."""
    names = [str(c) for c in class_names]
    if target is None:
        if len(missing) == 1:
            return missing[0], "the only class without triggered images"
        have = f"{len(missing)} classes have no triggered images" if missing else "every class has triggered images"
        raise ValueError(f"no target given and it cannot be inferred ({have}); pass --target as an index or a "
                         f"class name ({', '.join(names)})")
    text = str(target).strip()
    if text in names:
        index = names.index(text)
        if text.lstrip("-").isdigit() and int(text) != index and 0 <= int(text) < len(names):
            raise ValueError(f"--target {text!r} is ambiguous: class {text!r} has index {index}, and index {text} is "
                             f"class {names[int(text)]!r}; pass the other class's name instead of an index")
        return index, "given by name"
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(names):
            raise ValueError(f"--target {index} out of range: the model has {len(names)} classes (0..{len(names) - 1})")
        return index, "given by index"
    raise ValueError(f"--target {text!r} is neither a class name nor an index; classes: {', '.join(names)}")


def prepare_byo(
    clean: str | Path | ImageSet,
    triggered: str | Path | ImageSet,
    *,
    target: int | str | None = None,
    model_size: tuple[int, int] | None = None,
    model_classes: list[str] | None = None,
    model_num_classes: int | None = None,
    image_size: int | None = None,
    purifier_size: int | None = None,
    resize: bool = True,
    progress: bool = True,
    limits=None,
) -> ByoEval:
    """Read, align, filter and size the two sets (see the module docstring); errors name what is wrong."""
    notes: list[str] = []
    want = (int(image_size), int(image_size)) if image_size is not None else model_size
    mixed_to = want[0] if want is not None and want[0] == want[1] else None
    clean_set = _read(clean, "clean", mixed_to, progress, limits)
    trig_set = _read(triggered, "triggered", mixed_to, progress, limits)
    for ds, what in ((clean_set, "clean"), (trig_set, "triggered")):
        if ds.meta.get("resized_mixed_sizes_to"):
            notes.append(f"{what} images came in mixed sizes: each resized to {mixed_to}x{mixed_to} as it was read")

    names = list(model_classes) if model_classes else list(clean_set.class_names)
    source = "the model's" if model_classes else "the clean set's"
    if model_num_classes is not None and model_num_classes != len(names):
        raise ValueError(
            f"the model has {model_num_classes} outputs but {source} classes are {len(names)} ({', '.join(names)}); "
            "give every class a folder in the clean set (label i = the i-th folder name, sorted)"
        )
    clean_set = align_classes(clean_set, names, "clean images")
    trig_set = align_classes(trig_set, names, "triggered images")
    counts = np.bincount(trig_set.original_labels, minlength=len(names))
    tgt, how = resolve_target(target, names, [i for i in range(len(names)) if counts[i] == 0])
    notes.append(f"target: class {names[tgt]!r} (index {tgt}; {how}); labels follow {source} class order")

    keep = trig_set.original_labels != tgt
    dropped = int((~keep).sum())
    if dropped:
        trig_set = trig_set.subset(np.flatnonzero(keep))
        notes.append(f"dropped {dropped} triggered image(s) of the target class {names[tgt]!r} (ASR is measured on "
                     "non-target images)")
    if len(trig_set) == 0:
        raise ValueError(f"no triggered images left outside the target class {names[tgt]!r}")

    size = _choose_size(want, image_size, purifier_size, clean_set, trig_set)
    if purifier_size is not None and size != (purifier_size, purifier_size):
        raise ValueError(
            f"the purifier works on {purifier_size}x{purifier_size} images but the model takes {size[0]}x{size[1]}; "
            f"pass a purifier trained at {size[0]}x{size[1]} (--purifier), or evaluate defenses that need none"
        )
    why = ("the size asked for" if image_size is not None else "the model's input size" if want is not None
           else "the purifier's size" if purifier_size is not None else "the clean images' size")
    clean_set = _fit(clean_set, "clean", size, resize, why, notes, progress)
    trig_set = _fit(trig_set, "triggered", size, resize, why, notes, progress)

    mask = None
    if trig_set.poisoned.all() and clean_set.meta.get("origin", "").startswith(("ImageSet", "dataset version")):
        # a triggered split made by `detoxops attack run`: its source_index points into the clean split
        mask = EvalSet.from_imagesets(clean_set, trig_set, tgt).trigger_mask
    data = EvalSet(
        clean_images=np.asarray(clean_set.images),
        clean_labels=clean_set.labels,
        poisoned_images=np.asarray(trig_set.images),
        poisoned_labels=trig_set.original_labels,
        target=tgt,
        trigger_mask=mask,
        name=_set_name(triggered),
    )
    return ByoEval(data, names, tgt, size, notes, dropped, clean_set.meta.get("origin", ""),
                   trig_set.meta.get("origin", ""))


def _read(src: str | Path | ImageSet, what: str, mixed_to: int | None, progress: bool, limits) -> ImageSet:
    if isinstance(src, ImageSet):
        return src
    try:
        return read_whole(src, mixed_size_to=mixed_to, progress=progress, limits=limits)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{what} images: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{what} images: {exc}") from None


def _set_name(src: str | Path | ImageSet) -> str:
    if isinstance(src, ImageSet):
        return str(src.meta.get("name") or "triggered")
    path = Path(src)
    return path.parent.name if path.name in ("test", "train", "val") else path.name


def _hw(ds: ImageSet) -> tuple[int, int]:
    return int(ds.images.shape[1]), int(ds.images.shape[2])


def _choose_size(want, image_size, purifier_size, clean_set, trig_set) -> tuple[int, int]:
    if want is not None:
        return want
    if purifier_size is not None:
        return purifier_size, purifier_size
    if _hw(clean_set) != _hw(trig_set):
        (ch, cw), (th, tw) = _hw(clean_set), _hw(trig_set)
        raise ValueError(
            f"clean images are {ch}x{cw}, triggered {th}x{tw}, and the model does not say its input size; pass "
            f"--image-size {ch} or --image-size {th}"
        )
    return _hw(clean_set)


def _fit(ds: ImageSet, what: str, size: tuple[int, int], resize: bool, why: str, notes: list[str],
         progress: bool) -> ImageSet:
    have = _hw(ds)
    if have == size:
        return ds
    if not resize:
        raise ValueError(
            f"{what} images are {have[0]}x{have[1]} but {why} is {size[0]}x{size[1]}; resize them, or allow "
            "resizing (drop --no-resize)"
        )
    if size[0] != size[1]:
        raise ValueError(f"{what} images are {have[0]}x{have[1]}; the model takes non-square {size[0]}x{size[1]} "
                         "inputs, which detoxops does not resize to: resize the images yourself")
    notes.append(f"resized {len(ds)} {what} image(s) from {have[0]}x{have[1]} to {size[0]}x{size[1]} ({why}, "
                 "bilinear)")
    return ds.replace(images=resize_images(np.asarray(ds.images), size[0], progress)).with_transform(
        {"op": "resize", "size": size[0], "filter": "bilinear"}
    )


def byo_defenses(names: list[str], size: tuple[int, int], cfg, purifier=None, configured: str | None = None,
                 device: str = "cpu", *, classifier=None, baselines=None, precision: str = "auto") -> tuple[dict, str]:
    """``({name: defense}, purifier origin)``. A diffusion defense uses ``purifier`` (loaded), else
    ``diffusion.purifier`` (``configured``), else the purifier shipped for ``size``, loaded in ``precision``
    (``diffusion.precision``); its size must be ``size``."""
    from detoxops.defenses.catalog import build_defense, needs_purifier

    origin = "none"
    if needs_purifier(names):
        from detoxops.diffusion import load_purifier, purifier_folder

        if purifier is None:
            if size[0] != size[1]:
                raise ValueError(f"no purifier for non-square {size[0]}x{size[1]} images")
            folder, origin = purifier_folder(configured, size[0])
            if folder is None:
                raise ValueError(
                    f"no purifier for {size[0]}x{size[1]} images: detoxops ships 16x16 and 32x32 ones; train one "
                    "(`detoxops diffusion train --help`) and pass --purifier, or evaluate defenses that need none "
                    "(--defenses none,noising,shrinkpad,blur)"
                )
            purifier = load_purifier(folder, device=device, precision=precision)
            origin = f"{origin} ({folder})"
        else:
            origin = "given"
        if (purifier.image_size, purifier.image_size) != tuple(size):
            raise ValueError(
                f"the purifier works on {purifier.image_size}x{purifier.image_size} images, the evaluation on "
                f"{size[0]}x{size[1]}; pass a purifier trained at {size[0]}x{size[1]} (--purifier)"
            )
    # classifier / baselines: the query-based table-1 baselines (sancdifi, bdmae) ask the model (docs/baselines.md)
    return {n: build_defense(n, purifier, cfg, classifier=classifier, baselines=baselines) for n in names}, origin
