"""The GPU run kept from rotting: its bundle data file, its transport format, its output plan, the whole script end
to end at toy sizes on the CPU (``--smoke``), and the import of what it returns (benchmarks/gpu_*.py)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import gpu_bundle  # noqa: E402
import gpu_import  # noqa: E402
import gpu_run  # noqa: E402

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def make_archive(path: Path, train_per_class: int = 8, test_per_class: int = 6, seed: int = 0) -> Path:
    """A CIFAR-shaped ``<split>/<class>/<n>.jpg`` tar.gz of 32x32 JPEGs: a class colour plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as tf:
        for split, n in (("train", train_per_class), ("test", test_per_class)):
            for c, name in enumerate(CLASSES):
                base = np.array([25 * c, 255 - 25 * c, (70 * c) % 256], dtype=np.float64)
                for i in range(n):
                    pixels = np.clip(base + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(pixels).save(buf, format="JPEG", quality=75)
                    info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tf.addfile(info, io.BytesIO(buf.getvalue()))
    return path


# ------------------------------------------------------------------------------------------- bundle
def test_data_file_decodes_to_what_load_source_gives(tmp_path):
    from detoxops.config import DataConfig
    from detoxops.data import load_source

    archive = make_archive(tmp_path / "tiny.tar.gz", 3, 2)
    counts = gpu_bundle.build_data_file(archive, tmp_path / "data.npz")
    assert counts == {"train": 30, "test": 20}
    ref = load_source(archive, DataConfig(image_size=None, root=str(tmp_path / "d")), progress=False, cache=False)
    expected = {s: {"sha256": gpu_bundle.split_digest(ref[s].images, ref[s].labels)} for s in ("train", "test")}
    got = gpu_bundle.decode_data_file(tmp_path / "data.npz", workers=2, expected=expected)
    for split in ("train", "test"):
        np.testing.assert_array_equal(got[split].images, ref[split].images)
        np.testing.assert_array_equal(got[split].labels, ref[split].labels)
        assert got[split].class_names == ref[split].class_names == sorted(CLASSES)
    expected["test"]["sha256"] = "0" * 64
    with pytest.raises(ValueError, match="decoded test split"):
        gpu_bundle.decode_data_file(tmp_path / "data.npz", workers=1, expected=expected)
    with pytest.raises(FileNotFoundError, match="make gpu-bundle"):
        gpu_bundle.decode_data_file(tmp_path / "missing.npz")


def test_carried_bytes_counts_tree_and_bundle(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("/gpu_bundle/\n/ignored.bin\n")
    (tmp_path / "tracked.txt").write_bytes(b"x" * 1000)
    (tmp_path / "ignored.bin").write_bytes(b"y" * 5000)
    (tmp_path / "gpu_bundle").mkdir()
    (tmp_path / "gpu_bundle" / "data.npz").write_bytes(b"z" * 3000)
    sizes = gpu_bundle.carried_bytes(tmp_path, tmp_path / "gpu_bundle")
    assert sizes["tree_bytes"] == 1000 + len("/gpu_bundle/\n/ignored.bin\n")  # untracked but not ignored travel
    assert sizes["bundle_bytes"] == 3000
    assert sizes["limit_bytes"] == 64 * 1024 * 1024


# ---------------------------------------------------------------------------------------- transport
def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"conv.weight": torch.randn(8, 4, 3, 3, generator=g), "conv.bias": torch.randn(8, generator=g),
            "fc.weight": torch.randn(10, 32, generator=g) * 0.01, "bn.num_batches_tracked": torch.tensor(7)}


def test_transport_round_trip_fp16_and_int8():
    state = _state()
    fp16, _ = gpu_run.load_transport(gpu_run.transport_bytes(state, "fp16", {"kind": "x"}))
    torch.testing.assert_close(fp16["conv.weight"], state["conv.weight"].half().float(), rtol=0, atol=0)
    int8, meta = gpu_run.load_transport(gpu_run.transport_bytes(state, "int8", {"kind": "x"}))
    assert meta["precision"] == "int8" and meta["kind"] == "x"
    for key in ("conv.weight", "fc.weight"):
        w = state[key].reshape(state[key].shape[0], -1)
        half_step = (w.abs().amax(1) / 127 / 2)[:, None]
        err = (int8[key].reshape(w.shape) - w).abs()
        assert bool((err <= half_step * 1.0001).all()), key
        assert float(err.max()) > 0  # really quantised
    # biases stay float32, integer buffers as they are
    assert torch.equal(int8["conv.bias"], state["conv.bias"]) and torch.equal(fp16["conv.bias"], state["conv.bias"])
    assert int(int8["bn.num_batches_tracked"]) == 7
    with pytest.raises(ValueError, match="precision"):
        gpu_run.pack_state(state, "int4")


def test_estimate_bytes_bounds_the_real_file():
    state = _state()
    shapes = {k: (tuple(v.shape), v.is_floating_point()) for k, v in state.items()}
    for precision in ("fp16", "int8"):
        real = len(gpu_run.transport_bytes(state, precision, {"config": "{}"}))
        est = gpu_run.estimate_bytes(shapes, precision, meta_len=100)
        assert real <= est <= real + 3000, precision


def test_parts_split_join_and_reject_damage(tmp_path):
    blob = os.urandom(10_000)
    parts = gpu_run.write_parts(tmp_path, "thing", blob, 4_000)
    assert [p["file"] for p in parts] == [f"thing.safetensors.part{i}" for i in range(3)]
    import hashlib

    artifact = {"name": "thing", "parts": parts, "sha256": hashlib.sha256(blob).hexdigest()}
    assert gpu_run.read_parts(tmp_path, artifact) == blob
    good = (tmp_path / "thing.safetensors.part1").read_bytes()
    damaged = bytearray(good)
    damaged[5] ^= 1
    (tmp_path / "thing.safetensors.part1").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="part1"):
        gpu_run.read_parts(tmp_path, artifact)
    (tmp_path / "thing.safetensors.part1").write_bytes(good)
    (tmp_path / "thing.safetensors.part2").unlink()
    with pytest.raises(FileNotFoundError, match="part2"):
        gpu_run.read_parts(tmp_path, artifact)
    assert gpu_run.write_parts(tmp_path, "one", b"abc", 4_000)[0]["file"] == "one.safetensors"


def test_allocation_in_priority_order():
    items = [{"name": "purifier", "fp16_bytes": 71_500_000, "int8_bytes": 35_800_000},
             {"name": "purifier_small", "fp16_bytes": 2_150_000, "int8_bytes": 1_100_000},
             {"name": "victim-badnets", "fp16_bytes": 22_400_000, "int8_bytes": 11_200_000},
             {"name": "victim-clean", "fp16_bytes": 22_400_000, "int8_bytes": 11_200_000}]
    plan = gpu_run.allocate_artifacts(items, 64_000_000, 16_000_000, 6)
    # the 35.7M purifier in fp16 is over the whole budget: int8 in three files
    assert plan["purifier"] == {"precision": "int8", "reserved_bytes": 35_800_000, "files": 3}
    assert plan["purifier_small"]["precision"] == "fp16"
    assert plan["victim-badnets"] == {"precision": "fp16", "reserved_bytes": 22_400_000, "files": 2}
    assert plan["victim-clean"]["precision"] is None  # no files left
    assert sum(p["files"] for p in plan.values()) <= 6
    assert sum(p["reserved_bytes"] for p in plan.values()) <= 64_000_000


def test_full_plan_fits_and_unknown_arch_is_refused():
    plan = gpu_run.Plan()
    assert plan.post_parallel_s() < plan.budget_s
    assert plan.budget_s + plan.watchdog_grace_s + 20 < 600  # the run tool's 10-minute limit, with pip's time
    assert plan.artifact_budget_bytes + 2_000_000 <= gpu_run.OUT_TOTAL_LIMIT
    assert plan.part_bytes <= gpu_run.OUT_FILE_LIMIT
    with pytest.raises(SystemExit, match="ARCHITECTURES"):
        gpu_run.make_plan(gpu_run.parse_args(["--victim-arch", "no_such_net"]))


def test_gpu_run_sh_refuses_a_missing_bundle(tmp_path):
    env = {**os.environ, "BUNDLE": str(tmp_path / "no_bundle"), "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", str(BENCH / "gpu_run.sh")], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert "make gpu-bundle" in (tmp_path / "out" / "run.log").read_text()


def test_a_budget_too_small_still_writes_the_json(tmp_path):
    archive = make_archive(tmp_path / "tiny.tar.gz", 2, 2)
    gpu_bundle.build_data_file(archive, tmp_path / "bundle" / "cifar10.npz")
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_run.py"), "--smoke", "--budget-s", "400", "--bundle",
                           str(tmp_path / "bundle"), "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 1
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["status"].startswith("failed: RuntimeError: no time for the parallel phase")
    assert res["timeline"][0]["stage"] == "data" and res["timeline"][0]["status"] == "done"
    assert res["data"]["train"] == 20 and not res["data"]["verified_against_manifest"]


# ------------------------------------------------------------------------------------- the smoke run
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_smoke")
    archive = make_archive(root / "tiny.tar.gz")
    bundle = root / "bundle"
    gpu_bundle.build_data_file(archive, bundle / "cifar10.npz")
    out, work = root / "out", root / "work"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    start = time.time()
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_run.py"), "--smoke", "--bundle", str(bundle),
                           "--out", str(out), "--workdir", str(work)], capture_output=True, text=True,
                          timeout=1500, env=env, cwd=ROOT)
    return {"root": root, "out": out, "proc": proc, "seconds": time.time() - start}


def test_smoke_run_end_to_end(smoke_run):
    proc, out = smoke_run["proc"], smoke_run["out"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = [p for p in out.iterdir() if p.is_file()]
    assert len(files) <= gpu_run.OUT_MAX_FILES
    assert all(p.stat().st_size <= gpu_run.OUT_FILE_LIMIT for p in files)
    assert {"results.json", "run.log"} <= {p.name for p in files}
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "complete", res["timeline"]
    assert res["smoke"] and res["device"]["device"] in ("cpu", "cuda") and res["device"]["name"]
    assert [e["stage"] for e in res["timeline"]] == [
        "data", "plan_outputs", "purifier", "victims", "purifier_small", "denoising", "throughput", "sampdetox",
        "dataelixir"]
    # victims in the stated order, every one trained and scored
    assert list(res["victims"]) == ["clean", "badnets", "blended", "wanet"]
    for name, v in res["victims"].items():
        assert v["status"] == "done" and 0 <= v["ca"] <= 100
        assert (name == "clean") == ("asr" not in v)
    # SampDetox: every victim x (no defense, faithful, default) on the held-out half
    rows = res["sampdetox"]["rows"]
    assert {(r["victim"], r["setting"]) for r in rows} == {
        (v, s) for v in res["victims"] for s in ("none", "faithful", "robust")}
    assert all(r["n_clean"] >= 10 for r in rows)
    assert all(("asr" in r) == (r["victim"] != "clean") for r in rows)
    assert res["sampdetox"]["status"] == "complete"
    el = res["dataelixir"]
    assert el["attack"] == "badnets" and el["n"] == 30 and 0 <= el["tpr"] <= 100 and 0 <= el["fpr"] <= 100
    tp = res["throughput"]
    assert tp["unet_passes_per_s"] > 0 and tp["batch"] == 8
    for key in ("sampdetox_faithful_ddim", "sampdetox_faithful_ddpm", "sampdetox_robust_ddim",
                "dataelixir_ddpm", "dataelixir_ddim6"):
        assert tp[key]["images_per_s"] > 0, key
    den = res["denoising"]["purifiers"]
    assert {"purifier", "purifier_small", "shipped"} <= set(den)
    # what came back follows the plan: split parts, an int8 fallback, one left behind, all recorded
    arts = {a["name"]: a for a in res["artifacts"]}
    assert len(arts["purifier"]["parts"]) > 1
    assert any(a.get("precision") == "int8" for a in arts.values() if a.get("returned"))
    assert any(not a.get("returned") for a in arts.values())
    for a in arts.values():
        for part in a.get("parts", []) if a.get("returned") else []:
            assert (out / part["file"]).stat().st_size == part["bytes"]
    assert {o["file"] for o in res["outputs"]} | {"results.json"} == {p.name for p in files}
    log_text = (out / "run.log").read_text()
    assert "[victims]" in log_text and "[purifier_small]" in log_text and "stage dataelixir: done" in log_text


def test_import_smoke_run(smoke_run, tmp_path):
    from detoxops.diffusion import load_purifier
    from detoxops.models import load_classifier

    res = json.loads((smoke_run["out"] / "results.json").read_text())
    dirs = {"--runs-dir": tmp_path / "runs", "--results-dir": tmp_path / "results", "--docs-dir": tmp_path / "docs",
            "--assets-dir": tmp_path / "assets"}
    flat = [str(x) for kv in dirs.items() for x in kv]
    assert gpu_import.main([str(smoke_run["out"]), *flat]) == 0
    rid = gpu_import.run_id(res)
    assert rid.startswith("cpu-smoke-")
    md = (tmp_path / "docs" / f"gpu-{rid}.md").read_text()
    assert "Smoke run" in md and "## SampDetox on the held-out split" in md and "| badnets | robust |" in md
    assert json.loads((tmp_path / "results" / f"gpu_{rid}.json").read_text())["import"]["run_id"] == rid
    folder = tmp_path / "runs" / rid
    purifier = load_purifier(folder / "purifier")
    assert purifier.image_size == 32
    returned_victims = [a["name"].removeprefix("victim-") for a in res["artifacts"]
                        if a["kind"] == "classifier" and a.get("returned")]
    assert returned_victims
    for attack in returned_victims:
        load_classifier(folder / "victims" / attack)
    # the ship gate: shipped only when measured better at every level, or forced
    ok, _reason = gpu_import.ship_decision(res)
    code = gpu_import.main([str(smoke_run["out"]), *flat, "--ship"])
    assert code == (0 if ok else 2)
    assert (tmp_path / "assets" / "cifar10-32").is_dir() == ok
    assert gpu_import.main([str(smoke_run["out"]), *flat, "--ship", "--force"]) == 0
    training = json.loads((tmp_path / "assets" / "cifar10-32" / "training.json").read_text())
    assert training["forced"] == (not ok) and training["params"] == res["purifiers"]["purifier_small"]["params"]
    shipped = load_purifier(tmp_path / "assets" / "cifar10-32")
    assert shipped.image_size == 32


def test_import_refuses_a_damaged_part(smoke_run, tmp_path):
    copy = tmp_path / "returned"
    shutil.copytree(smoke_run["out"], copy)
    part = copy / "purifier.safetensors.part0"
    data = bytearray(part.read_bytes())
    data[-1] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="purifier.safetensors.part0"):
        gpu_import.main([str(copy), "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "r"),
                         "--docs-dir", str(tmp_path / "d")])
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
