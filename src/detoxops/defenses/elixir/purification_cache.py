"""Purified candidates stored by image content (``dataelixir.noise: per_image``).

Stage 1 has two halves of very different cost: purifying an image (``rounds`` diffusion rounds: nearly all of
DataElixir's time) and scoring its candidates with the victim (a few classifier passes). The first depends only on
the image, the purifier and the round settings — not on the victim or on the rest of the dataset — once every image
draws its noise from a stream keyed by its own content (:class:`~detoxops.diffusion.noise.KeyedNoise`). This store
keeps those purifications, so a re-scan with a retrained victim, the next ingestion batch that repeats most of the
last one, or the attacks of one benchmark seed (which share 90 % of their images) purify each image once.

Layout: ``<root>/<key>/`` per purification setting (``key`` a digest of the purifier's weights, its schedule and
precision, and the round settings: :func:`purification_fingerprint`), holding packs of rows, each pack two ``.npy``
files written to temporary names and renamed, candidates first: ``pack-<id>.cands.npy`` (``(n, K, H, W, C)``
uint8) and ``pack-<id>.keys.npy`` (``(n, 16)`` uint8 content digests), the keys file marking the pack complete.
Several processes may fill one store at once (packs have unique names; an image purified twice is stored twice,
identically). A pack that cannot be read back is skipped with a warning, and its images are purified again. The
store is never pruned automatically: delete a key folder to reclaim its space (``du`` tells its size: 12 KB per
image at CIFAR-10's 4 candidates).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path

import numpy as np

from detoxops.defenses.elixir.shards import BUSY_S, fingerprint_key

__all__ = ["PurificationCache", "content_digests", "noise_keys", "DIGEST_BYTES"]

log = logging.getLogger(__name__)

DIGEST_BYTES = 16
FINGERPRINT = "fingerprint.json"


def content_digests(images: np.ndarray, seed: int) -> np.ndarray:
    """``(N, 16)`` uint8: SHA-256 of each uint8 image (its shape and bytes) and ``seed``, truncated. Equal images
    get equal digests; the seed makes another ``dataelixir.seed`` draw other noise for the same image."""
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"content_digests expects uint8 images (N, H, W, C), got {images.dtype} {images.shape}")
    prefix = f"{int(seed)}:{images.shape[1:]}:".encode()
    out = np.empty((len(images), DIGEST_BYTES), dtype=np.uint8)
    for i, img in enumerate(images):  # hashing 3 KB takes microseconds; there is no batched SHA-256 in numpy
        out[i] = np.frombuffer(hashlib.sha256(prefix + img.tobytes()).digest()[:DIGEST_BYTES], dtype=np.uint8)
    return out


def noise_keys(digests: np.ndarray) -> list[int]:
    """The :class:`~detoxops.diffusion.noise.KeyedNoise` key of each digest: its first 63 bits."""
    return [int.from_bytes(bytes(d[:8]), "little") & (2**63 - 1) for d in digests]


class PurificationCache:
    """The purified candidates of one purification setting (``fingerprint``) under ``root``."""

    def __init__(self, root: str | Path, fingerprint: dict) -> None:
        self.folder = Path(root) / fingerprint_key(fingerprint)
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / FINGERPRINT
        text = json.dumps(fingerprint, sort_keys=True)
        if meta.is_file() and meta.read_text() != text:
            raise ValueError(f"{self.folder}: holds purifications of another setting (fingerprint differs); "
                             f"delete the folder or use another dataelixir.purification_cache")
        if not meta.is_file():
            tmp = self.folder / f".{FINGERPRINT}.{uuid.uuid4().hex[:8]}"
            tmp.write_text(text)
            os.replace(tmp, meta)
        self._index: dict[bytes, tuple[str, int]] = {}
        self._seen: set[str] = set()
        now = time.time()
        for tmp in self.folder.glob(".pack-*"):  # left by a killed write (not a concurrent writer's: older)
            try:
                if now - tmp.stat().st_mtime > BUSY_S:
                    tmp.unlink()
            except OSError:
                pass

    def _refresh(self) -> None:
        """Index the packs written since the last look (by this or another process)."""
        for keys_file in sorted(self.folder.glob("pack-*.keys.npy")):
            pack = keys_file.name[: -len(".keys.npy")]
            if pack in self._seen:
                continue
            self._seen.add(pack)
            try:
                keys = np.load(keys_file, allow_pickle=False)
                if keys.ndim != 2 or keys.shape[1] != DIGEST_BYTES or keys.dtype != np.uint8:
                    raise ValueError(f"keys of shape {keys.shape} and dtype {keys.dtype}")
            except (ValueError, OSError, EOFError) as exc:
                log.warning("%s: unreadable purification pack skipped (%s)", keys_file, exc)
                continue
            for row, key in enumerate(keys):
                self._index.setdefault(key.tobytes(), (pack, row))

    def __len__(self) -> int:
        self._refresh()
        return len(self._index)

    def get(self, digests: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """``(candidates, found)``: ``found`` (N,) bool, and the stored candidates ``(N, K, H, W, C)`` uint8 with
        zeros where not found (``None`` when none is found)."""
        self._refresh()
        where = [self._index.get(d.tobytes()) for d in digests]
        found = np.array([w is not None for w in where], dtype=bool)
        out: np.ndarray | None = None
        by_pack: dict[str, list[tuple[int, int]]] = {}
        for i, w in enumerate(where):
            if w is not None:
                by_pack.setdefault(w[0], []).append((i, w[1]))
        for pack, pairs in by_pack.items():
            path = self.folder / f"{pack}.cands.npy"
            try:
                cands = np.load(path, mmap_mode="r", allow_pickle=False)
                rows = np.array([r for _, r in pairs])
                if cands.dtype != np.uint8 or cands.ndim != 5 or rows.max() >= len(cands):
                    raise ValueError(f"candidates of shape {cands.shape} and dtype {cands.dtype}")
                block = np.asarray(cands[rows])
            except (ValueError, OSError, EOFError) as exc:
                log.warning("%s: unreadable purification pack; its images are purified again (%s)", path, exc)
                self._forget(pack)
                found[[i for i, _ in pairs]] = False
                continue
            if out is None:
                out = np.zeros((len(digests), *block.shape[1:]), dtype=np.uint8)
            elif out.shape[1:] != block.shape[1:]:
                raise ValueError(f"{path}: candidates of shape {block.shape[1:]}, others {out.shape[1:]}")
            out[[i for i, _ in pairs]] = block
        return out, found

    def _forget(self, pack: str) -> None:
        self._index = {k: v for k, v in self._index.items() if v[0] != pack}

    def put(self, digests: np.ndarray, candidates: np.ndarray) -> None:
        """Store the candidates ``(N, K, H, W, C)`` uint8 of the images with these digests, as one pack."""
        if candidates.dtype != np.uint8 or candidates.ndim != 5 or len(candidates) != len(digests):
            raise ValueError(f"put expects uint8 candidates (N, K, H, W, C) for {len(digests)} digests, got "
                             f"{candidates.dtype} {candidates.shape}")
        if not len(digests):
            return
        pack = f"pack-{uuid.uuid4().hex[:12]}"
        for suffix, array in ((".cands.npy", candidates), (".keys.npy", np.asarray(digests, dtype=np.uint8))):
            tmp = self.folder / f".{pack}{suffix}.{uuid.uuid4().hex[:8]}.npy"
            np.save(tmp, array, allow_pickle=False)
            os.replace(tmp, self.folder / f"{pack}{suffix}")
