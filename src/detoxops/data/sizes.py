"""Which size images are brought to: ``data.image_size: auto`` lets the data decide (issue #24).

A user's dataset should keep its own size unless they ask otherwise: resizing a 32x32 set to the digits demo's
16x16 halves every trigger and feeds the wrong purifier. :func:`decide_image_size` turns the configured value
into the size ingestion resizes to (``None``: keep the source's size) and a sentence that says why, which the
CLI and the flows print:

* an ``int``: every image is resized to that square size (asked for);
* ``None``: sizes are kept and mixed sizes are an error (asked for);
* ``"auto"``: the builtin sources have their size (``digits`` 16, the demo's; ``cifar10`` / ``gtsrb`` 32); a
  folder or archive whose images all have one square size keeps it; one non-square size is resized to its
  shorter side; mixed sizes are resized to the most common one. A stored version or an ``.npz`` keeps its size.

The sizes are read from the image headers (:func:`probe_image_sizes`), nothing is decoded.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from detoxops.data.archives import is_archive, iter_entries
from detoxops.data.validate import IMAGE_SUFFIXES

__all__ = ["AUTO", "BUILTIN_IMAGE_SIZES", "SizeDecision", "decide_image_size", "probe_image_sizes"]

AUTO = "auto"
BUILTIN_IMAGE_SIZES = {"digits": 16, "cifar10": 32, "gtsrb": 32}
"""``auto`` sizes of the builtin sources: digits' 8x8 scans upscaled to the demo's 16 (the size of the shipped
``digits-16`` purifier); CIFAR-10 is 32x32; GTSRB's images vary in size and the usual benchmark size is 32."""


@dataclass(frozen=True)
class SizeDecision:
    image_size: int | None
    """What ingestion resizes every image to; ``None`` keeps the source's size."""
    expected: int | None
    """The side every ingested image will have when it is known before ingesting, else ``None``."""
    note: str
    """Why, in one sentence (printed by the CLI and the flows)."""


def probe_image_sizes(source: str | Path, limits=None) -> dict[tuple[int, int], int]:
    """``{(width, height): count}`` of the images in a class-folder tree or archive, from the image headers (no
    decoding; hidden files and non-images skipped as ingestion skips them; unreadable ones are left to ingestion,
    which names them). ``{}`` for other sources (builtin names, stored versions, ``.npz``)."""
    from PIL import Image

    from detoxops.data.store import is_version_dir

    path = Path(source)
    if not ((path.is_dir() and not is_version_dir(path)) or (path.is_file() and is_archive(path))):
        return {}
    sizes: Counter = Counter()
    for entry in iter_entries(path, limits):
        parts = entry.path.split("/")
        if entry.is_dir or any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue
        if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            with Image.open(io.BytesIO(entry.data)) as img:
                sizes[img.size] += 1
        except Exception:  # noqa: BLE001 - ingestion reports the unreadable file with its name
            continue
    return dict(sizes)


def decide_image_size(source: str | Path, configured: int | str | None, limits=None) -> SizeDecision:
    """The size ``source``'s images are ingested at under ``data.image_size = configured`` (see the module)."""
    if configured is None:
        return SizeDecision(None, None, "images kept at their size (data.image_size: null)")
    if configured != AUTO:
        if isinstance(configured, bool) or not isinstance(configured, int) or configured < 1:
            raise ValueError(f"data.image_size must be a positive integer, 'auto' or null, got {configured!r}")
        return SizeDecision(configured, configured,
                            f"images resized to {configured}x{configured} (data.image_size: {configured})")
    text = str(source)
    if text in BUILTIN_IMAGE_SIZES:
        size = BUILTIN_IMAGE_SIZES[text]
        return SizeDecision(size, size, f"images at {size}x{size}, {text}'s size (set data.image_size to resize)")
    sizes = probe_image_sizes(source, limits)
    if not sizes:
        return SizeDecision(None, None, "images kept at their stored size (set data.image_size to resize)")
    if len(sizes) == 1:
        (w, h), = sizes
        if w == h:
            return SizeDecision(None, w, f"images kept at {w}x{h}, the source's size (set data.image_size to resize)")
        side = min(w, h)
        return SizeDecision(side, side, f"all images are {w}x{h}, not square: resized to {side}x{side} "
                                        "(set data.image_size to choose)")
    # the most common size; among equally common ones the smallest (no upscaling of the majority)
    (w, h), _ = max(sizes.items(), key=lambda kv: (kv[1], -kv[0][0] * kv[0][1]))
    side = min(w, h)
    listed = ", ".join(f"{a}x{b} ({c})" for (a, b), c in sorted(sizes.items(), key=lambda kv: -kv[1])[:4])
    more = f" and {len(sizes) - 4} more" if len(sizes) > 4 else ""
    return SizeDecision(side, side, f"mixed image sizes ({listed}{more}): resized to {side}x{side}, the most "
                                    "common size (set data.image_size to choose)")
