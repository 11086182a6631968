"""Build ``gpu_bundle/``: everything a lent GPU machine needs beyond the working tree, within its 64 MiB limit.

The GPU machine (docs/gpu.md) has torch, torchvision, numpy, scipy, scikit-image, safetensors, PyYAML, tqdm and
huggingface_hub, but no diffusers and no pydantic, and it cannot reach any registry. So the bundle carries

* ``wheels/``: the pure-Python packages the core package imports that are missing there (diffusers,
  pydantic + its compiled core for CPython 3.12 / x86-64, and their small dependencies), at the versions this
  venv runs, downloaded with ``pip download --no-deps``;
* ``cifar10.npz``: all of CIFAR-10 (50,000 train + 10,000 test) as the JPEG bytes of the shared archive, one
  concatenated ``uint8`` array per split plus offsets and labels, ordered exactly as
  ``detoxops.data.load_source`` orders the archive (class, then path), deflated. 60,000 decoded images are
  184 MB; the JPEG bytes are 53.6 MB, most of it the same header in every file, and deflate to about 20 MB;
  they decode in a few seconds on the GPU machine's 16 cores (:func:`decode_data_file`);
* ``manifest.json``: the code version (git commit, dirty files), the wheels, and the sha256 of every decoded
  split as ``load_source`` decodes the archive here, which the GPU run checks after decoding.

    make gpu-bundle            # = .venv/bin/python benchmarks/gpu_bundle.py

It ends by printing the size of what one ``run`` call carries (tracked + untracked-not-ignored files + the
bundle) and fails if that is over the limit. ``gpu_bundle/`` is git-ignored: the dataset is never committed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from pathlib import Path, PurePosixPath

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
DATA_FILE = "cifar10.npz"
MANIFEST = "manifest.json"
CARRY_LIMIT_BYTES = 64 * 1024 * 1024  # the run tool's limit on the working tree it sends
DATA_FORMAT = "detoxops-jpeg-npz/1"

# Imported by the core package (or by diffusers) and absent from the GPU machine's image (docs/gpu.md).
# Versions: whatever this venv has, so the GPU run imports the code the tests ran against.
WHEEL_PACKAGES = (
    "diffusers", "importlib_metadata", "pydantic", "pydantic_core", "typing_inspection", "annotated_types",
    "typing_extensions",
)
GPU_PYTHON = "3.12"  # python3 of the GPU machine's image (KINDS.md)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


# ------------------------------------------------------------------------------------------------ data
def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def split_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 over a split's decoded pixels and labels (what the GPU run verifies after decoding)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def build_data_file(archive: Path, dest: Path) -> dict:
    """Write the JPEG bytes of a ``<split>/<class>/<image>`` archive to ``dest`` (.npz, deflated), in ``load_source``'s order. Returns the per-split counts."""
    from detoxops.data.archives import iter_entries
    from detoxops.data.validate import IMAGE_SUFFIXES

    members: dict[str, list[tuple[str, tuple[str, ...], bytes]]] = {}
    for entry in iter_entries(Path(archive)):
        parts = tuple(entry.path.split("/"))
        if entry.is_dir or any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue
        if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if len(parts) != 3 or parts[0] not in ("train", "test"):
            raise ValueError(f"{archive}: member {entry.path!r} is not <train|test>/<class>/<image>")
        members.setdefault(parts[0], []).append((parts[1], parts, entry.data))
    if set(members) != {"train", "test"}:
        raise ValueError(f"{archive}: needs train/ and test/ splits, found {sorted(members)}")
    class_names = sorted({cls for items in members.values() for cls, _, _ in items})
    label_of = {name: i for i, name in enumerate(class_names)}
    arrays: dict[str, np.ndarray] = {"class_names": np.array(class_names), "format": np.array(DATA_FORMAT)}
    counts = {}
    for split, items in members.items():
        # the order of detoxops.data.folders.imagesets_from_entries: (label, path)
        items.sort(key=lambda item: (label_of[item[0]], item[1]))
        blobs = [data for _, _, data in items]
        offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(b) for b in blobs])
        arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        arrays[f"{split}_offsets"] = offsets
        arrays[f"{split}_labels"] = np.array([label_of[c] for c, _, _ in items], dtype=np.int64)
        counts[split] = len(items)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}.npz")
    # deflated: the bytes are JPEG, but every 32x32 CIFAR JPEG repeats the same ~600-byte header (quantisation and
    # Huffman tables), which is most of each file: 53.6 MB of JPEG bytes deflate to about the tar.gz's 20 MB
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, dest)
    return counts


def _decode_chunk(args: tuple[bytes, np.ndarray, int]) -> np.ndarray:
    from detoxops.data.validate import ImagePolicy, decode_image

    blob, offsets, first = args
    policy = ImagePolicy(image_size=None, color="rgb")
    return np.stack([
        decode_image(blob[offsets[i] - offsets[0]: offsets[i + 1] - offsets[0]], f"image {first + i}", policy).pixels
        for i in range(len(offsets) - 1)
    ])


def decode_data_file(path: Path, workers: int | None = None, expected: dict | None = None) -> dict:
    """``{"train": ImageSet, "test": ImageSet}`` from a file of :func:`build_data_file`, decoded with the core's
    ``decode_image`` in ``workers`` processes. ``expected`` (the manifest's ``data.splits``) is checked: a split
    whose decoded pixels or labels differ from what ``load_source`` gave when the bundle was built is an error."""
    from detoxops.data import ImageSet

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"bundle data file not found: {path} (build it with `make gpu-bundle`)")
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if str(arrays.get("format", "")) != DATA_FORMAT:
        raise ValueError(f"{path}: not a {DATA_FORMAT} file (format {arrays.get('format')!r})")
    class_names = [str(c) for c in arrays["class_names"]]
    workers = workers or max(1, min(16, os.cpu_count() or 1))
    out = {}
    for split in ("train", "test"):
        blob, offsets = arrays[f"{split}_jpeg"], arrays[f"{split}_offsets"]
        n = len(offsets) - 1
        step = max(1, -(-n // (workers * 4)))
        jobs = [(blob[offsets[s]: offsets[min(s + step, n)]].tobytes(), offsets[s: min(s + step, n) + 1], s)
                for s in range(0, n, step)]
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(workers) as pool:
                images = np.concatenate(list(pool.map(_decode_chunk, jobs)))
        else:
            images = np.concatenate([_decode_chunk(j) for j in jobs])
        labels = arrays[f"{split}_labels"].astype(np.int64)
        if expected is not None:
            want = expected.get(split, {}).get("sha256")
            got = split_digest(images, labels)
            if want is not None and got != want:
                raise ValueError(f"{path}: decoded {split} split has sha256 {got}, the manifest says {want} "
                                 "(rebuild the bundle with `make gpu-bundle`)")
        out[split] = ImageSet(images=images, labels=labels, class_names=class_names,
                              meta={"source": str(path), "split": split, "transforms": []})
    return out


# ---------------------------------------------------------------------------------------------- wheels
def download_wheels(dest: Path, packages: tuple[str, ...] = WHEEL_PACKAGES) -> list[dict]:
    """``pip download --no-deps`` of ``packages`` at this venv's versions, for CPython 3.12 / manylinux x86-64.
    Wheels already in ``dest`` at the right version are kept (no network then)."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {name: metadata.version(name) for name in packages}
    normal = {name: name.replace("-", "_").lower() for name in packages}

    def present(name: str) -> Path | None:
        prefix = f"{normal[name]}-{wanted[name]}-"
        return next((p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix.lower())), None)

    missing = [name for name in packages if present(name) is None]
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", GPU_PYTHON, "--implementation", "cp", "-d", str(dest)]
        for plat in PLATFORMS:
            cmd += ["--platform", plat]
        cmd += [f"{name}=={wanted[name]}" for name in missing]
        print("downloading wheels:", " ".join(f"{n}=={wanted[n]}" for n in missing), flush=True)
        subprocess.run(cmd, check=True)
    # one version of each package: pip refuses two in one --no-index install
    keep = {present(name) for name in packages}
    for stale in dest.glob("*.whl"):
        if stale not in keep:
            stale.unlink()
    rows = []
    for name in packages:
        wheel = present(name)
        if wheel is None:
            raise FileNotFoundError(f"pip download left no wheel for {name}=={wanted[name]} in {dest}")
        rows.append({"package": name, "version": wanted[name], "file": wheel.name, "bytes": wheel.stat().st_size,
                     "sha256": _sha256_file(wheel)})
    return rows


# -------------------------------------------------------------------------------------------- manifest
def code_version(root: Path = ROOT) -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain").splitlines() if line]
    return {"git_commit": git("rev-parse", "HEAD").strip() or None, "dirty_files": dirty[:50],
            "num_dirty": len(dirty)}


def carried_bytes(root: Path, bundle: Path) -> dict:
    """Bytes one ``run`` call sends: tracked + untracked-not-ignored files, plus the carried bundle."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, check=True).stdout.decode().split("\0")
    tree = sum((root / p).stat().st_size for p in listing if p and (root / p).is_file())
    bundle_bytes = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    return {"tree_bytes": tree, "bundle_bytes": bundle_bytes, "total_bytes": tree + bundle_bytes,
            "limit_bytes": CARRY_LIMIT_BYTES}


def build(bundle: Path, archive: Path, *, skip_wheels: bool = False, check_limit: bool = True) -> dict:
    t0 = time.time()
    bundle.mkdir(parents=True, exist_ok=True)
    manifest_path = bundle / MANIFEST
    old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    wheels = [] if skip_wheels else download_wheels(bundle / "wheels")
    data_path = bundle / DATA_FILE
    archive_sha = _sha256_file(archive)
    old_data = old.get("data", {})
    if data_path.is_file() and old_data.get("archive_sha256") == archive_sha and \
            old_data.get("sha256") == _sha256_file(data_path):
        data_info = old_data  # unchanged archive: keep the file and its verified digests
        print(f"{data_path}: up to date", flush=True)
    else:
        from detoxops.config import DataConfig
        from detoxops.data import load_source

        counts = build_data_file(archive, data_path)
        # the reference decode: the product's own loader, whose pixels the GPU run must reproduce
        splits = load_source(archive, DataConfig(image_size=None, root=str(bundle / ".tmp-data")), progress=False,
                             cache=False)
        data_info = {"file": DATA_FILE, "format": DATA_FORMAT, "archive": archive.name, "archive_sha256": archive_sha,
                     "sha256": _sha256_file(data_path), "bytes": data_path.stat().st_size,
                     "class_names": splits["train"].class_names,
                     "splits": {s: {"n": counts[s], "sha256": split_digest(splits[s].images, splits[s].labels)}
                                for s in ("train", "test")}}
    manifest = {"format": "detoxops-gpu-bundle/1", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "code": code_version(), "python": GPU_PYTHON, "wheels": wheels, "data": data_info}
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, manifest_path)
    sizes = carried_bytes(ROOT, bundle) if (ROOT / ".git").exists() else {}
    mib = 1024 * 1024
    print(f"bundle {bundle}: wheels {sum(w['bytes'] for w in wheels) / mib:.1f} MiB, data "
          f"{data_info['bytes'] / mib:.1f} MiB ({data_info['splits']['train']['n']} train + "
          f"{data_info['splits']['test']['n']} test images), built in {time.time() - t0:.0f} s")
    if sizes:
        print(f"one run call carries {sizes['total_bytes'] / mib:.1f} MiB (tree {sizes['tree_bytes'] / mib:.1f} + "
              f"bundle {sizes['bundle_bytes'] / mib:.1f}) of the {sizes['limit_bytes'] / mib:.0f} MiB limit")
        if check_limit and sizes["total_bytes"] > sizes["limit_bytes"]:
            raise SystemExit(f"over the carry limit by {(sizes['total_bytes'] - sizes['limit_bytes']) / mib:.1f} MiB: "
                             "ignore or remove untracked files, or carry less")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=ROOT / "gpu_bundle")
    ap.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE,
                    help="a <train|test>/<class>/<image> archive (default: the shared CIFAR-10 JPEG archive)")
    ap.add_argument("--skip-wheels", action="store_true", help="data only (no registry needed)")
    args = ap.parse_args(argv)
    if not args.archive.is_file():
        raise SystemExit(f"archive not found: {args.archive}")
    build(args.bundle, args.archive, skip_wheels=args.skip_wheels)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
