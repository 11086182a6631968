"""`detoxops detox eval` on a model and images made elsewhere (issue #30): class-folder trees made here (32x32, 10
classes, the triggered one without the target class), a detoxops classifier folder and the same classifier as
ONNX; `data ingest --split / --no-split`. The same classifier over HTTP: tests/platform/test_detox_byo_http.py."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detoxops.cli import app

_spec = importlib.util.spec_from_file_location("byo_fixtures", Path(__file__).with_name("byo_fixtures.py"))
byo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(byo)  # tests/ is not a package: the shared builders are loaded by path

runner = CliRunner()
PARAMS = ["--params", str(Path(__file__).with_name("byo_params.yaml"))]  # the defaults, not the repo's params.yaml
FAST = [arg for override in byo.FAST for arg in ("--set", override)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    clean, triggered = byo.make_trees(root)
    victim = byo.train_backdoored(root / "victim")
    onnx = byo.export_onnx(victim, root / "victim.onnx")
    return {"root": root, "clean": clean, "triggered": triggered, "victim": victim, "onnx": onnx}


def _eval(*args: str, ok: bool = True):
    result = runner.invoke(app, ["detox", "eval", "--no-progress", *PARAMS, *args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_folders_with_classifier_folder_and_onnx_agree_on_none(world):
    """The Done-when, (a) and (b): one command each prints CA / PA / ASR for none and sampdetox."""
    common = ["--clean", str(world["clean"]), "--triggered", str(world["triggered"]), "--defenses",
              "none,sampdetox", "--limit", "10", *FAST]
    folder = _eval("--model", str(world["victim"]), *common)
    onnx = _eval("--model", str(world["onnx"]), *common)
    rows_folder, rows_onnx = byo.table_rows(folder.output), byo.table_rows(onnx.output)
    assert set(rows_folder) == set(rows_onnx) == {"none", "sampdetox"}
    assert rows_folder["none"] == rows_onnx["none"]
    ca, pa, asr = rows_folder["none"]
    assert ca >= 90 and asr >= 90 and pa <= 10  # the backdoored classifier, scored with the right labels / target
    for ca_, pa_, asr_ in (rows_folder["sampdetox"], rows_onnx["sampdetox"]):
        assert 0 <= ca_ <= 100 and 0 <= pa_ <= 100 and 0 <= asr_ <= 100
    assert "onnx victim.onnx (10 classes, 32x32 input" in onnx.output
    assert "target: class 'cat' (index 3; the only class without triggered images)" in folder.output
    assert "purifier  shipped:cifar10-32" in folder.output


def test_whole_folders_no_split_and_target_by_index_or_name(world, tmp_path):
    out = tmp_path / "rows.json"
    by_name = _eval("--model", str(world["victim"]), "--clean", str(world["clean"]), "--poisoned",
                    str(world["triggered"]), "--defenses", "none", "--target", "cat", "--out", str(out))
    record = json.loads(out.read_text())
    assert "clean     40 images" in by_name.output and "triggered 36 images" in by_name.output  # all, no split
    assert record["target"] == 3 and record["target_name"] == "cat" and record["class_names"] == byo.CLASSES
    assert record["rows"][0]["n_clean"] == 40 and record["rows"][0]["n_poisoned"] == 36
    by_index = _eval("--victim", str(world["victim"]), "--clean", str(world["clean"]), "--triggered",
                     str(world["triggered"]), "--defenses", "none", "--target", "3")
    assert byo.table_rows(by_index.output) == byo.table_rows(by_name.output)
    bad = _eval("--model", str(world["victim"]), "--clean", str(world["clean"]), "--triggered",
                str(world["triggered"]), "--defenses", "none", "--target", "kat", ok=False)
    assert bad.exit_code == 1 and "'kat' is neither a class name nor an index" in bad.output and "truck" in bad.output
    bad = _eval("--model", str(world["victim"]), "--clean", str(world["clean"]), "--triggered",
                str(world["triggered"]), "--defenses", "none", "--target", "10", ok=False)
    assert "--target 10 out of range" in bad.output


def test_target_class_images_in_the_triggered_set_are_dropped_and_counted(world, tmp_path):
    images, labels = byo.clean_images(3, seed=11)
    triggered = byo.write_tree(tmp_path / "with_cat", byo.add_trigger(images), labels)
    result = _eval("--model", str(world["victim"]), "--clean", str(world["clean"]), "--triggered", str(triggered),
                   "--defenses", "none", "--target", "cat")
    assert "dropped 3 triggered image(s) of the target class 'cat'" in result.output
    assert "triggered 27 images" in result.output
    # without --target, a triggered set that has every class gives no target to infer
    result = _eval("--model", str(world["victim"]), "--clean", str(world["clean"]), "--triggered", str(triggered),
                   "--defenses", "none", ok=False)
    assert "no target given and it cannot be inferred" in result.output


def test_other_sizes_are_resized_with_a_note_or_refused(world, tmp_path):
    images, labels = byo.clean_images(2, seed=12, size=40)
    clean40 = byo.write_tree(tmp_path / "clean40", images, labels)
    result = _eval("--model", str(world["victim"]), "--clean", str(clean40), "--triggered", str(world["triggered"]),
                   "--defenses", "none")
    assert "resized 20 clean image(s) from 40x40 to 32x32 (the model's input size" in result.output
    ca, _, asr = byo.table_rows(result.output)["none"]
    assert ca >= 90 and asr >= 90
    refused = _eval("--model", str(world["victim"]), "--clean", str(clean40), "--triggered", str(world["triggered"]),
                    "--defenses", "none", "--no-resize", ok=False)
    assert refused.exit_code == 1
    assert "clean images are 40x40 but the model's input size is 32x32" in refused.output
    # a purifier at another size than the evaluation is refused with both sizes named
    refused = _eval("--model", str(world["victim"]), "--clean", str(clean40), "--triggered", str(world["triggered"]),
                    "--defenses", "none,sampdetox", "--image-size", "40", ok=False)
    assert "no purifier for 40x40 images" in refused.output


def test_clean_set_missing_a_class_is_refused_naming_counts(world, tmp_path):
    images, labels = byo.clean_images(2, seed=13)
    nine = byo.write_tree(tmp_path / "nine", images, labels, skip="truck")
    result = _eval("--model", str(world["victim"]), "--clean", str(nine), "--triggered", str(world["triggered"]),
                   "--defenses", "none", ok=False)
    assert "the model has 10 outputs but the clean set's classes are 9" in result.output
    (nine / "truck").mkdir()  # an empty folder keeps the class in the label order
    result = _eval("--model", str(world["victim"]), "--clean", str(nine), "--triggered", str(world["triggered"]),
                   "--defenses", "none")
    assert "clean     18 images" in result.output
    stray = byo.write_tree(tmp_path / "stray", images[:2], labels[:2])
    shutil.move(stray / "airplane", stray / "zeppelin")
    result = _eval("--model", str(world["victim"]), "--clean", str(world["clean"]), "--triggered", str(stray),
                   "--defenses", "none", "--target", "cat", ok=False)
    assert "class 'zeppelin' is not one of the model's classes" in result.output


def test_pickle_formats_need_the_explicit_opt_in(world, tmp_path):
    import torch

    from detoxops.models import load_classifier

    scripted = torch.jit.trace(load_classifier(world["victim"]), torch.rand(1, 3, 32, 32))
    path = tmp_path / "victim.pt"
    scripted.save(str(path))
    args = ["--clean", str(world["clean"]), "--triggered", str(world["triggered"]), "--defenses", "none"]
    refused = _eval("--model", str(path), *args, ok=False)
    assert refused.exit_code == 1 and "pickle-based format" in refused.output
    assert "--allow-unsafe-model" in refused.output
    allowed = _eval("--model", str(path), "--allow-unsafe-model", "--image-size", "32", *args)
    reference = _eval("--model", str(world["victim"]), *args)
    assert byo.table_rows(allowed.output)["none"] == byo.table_rows(reference.output)["none"]
    weights = tmp_path / "bare.safetensors"
    shutil.copy(Path(world["victim"]) / "model.safetensors", weights)
    assert "carry no architecture" in _eval("--model", str(weights), *args, ok=False).output


def test_stored_sets_evaluate_like_the_folders(world, tmp_path):
    """`data ingest --no-split` stores the clean tree whole; `--split test` keeps an empty target folder as a
    class. Both stored versions evaluate like the trees they came from."""
    trig = tmp_path / "trig_empty_cat"
    shutil.copytree(world["triggered"], trig)
    (trig / "cat").mkdir()
    args = ["--out", str(tmp_path / "data"), "--no-progress", *PARAMS]
    res = runner.invoke(app, ["data", "ingest", str(world["clean"]), "--no-split", *args])
    assert res.exit_code == 0, res.output
    clean_version = Path(res.stdout.splitlines()[0])
    assert "test 40 images" in res.output and "train" not in res.stdout.splitlines()[1]
    res = runner.invoke(app, ["data", "ingest", str(trig), "--split", "test", *args])
    assert res.exit_code == 0, res.output
    trig_version = Path(res.stdout.splitlines()[0])
    assert "test 36 images" in res.output and "10 classes" in res.output
    # the empty folder is an error without the flag, and the error says which flag to use
    res = runner.invoke(app, ["data", "ingest", str(trig), *args])
    assert res.exit_code == 1 and "empty class folder 'cat'" in res.output and "--split test" in res.output

    from_store = _eval("--model", str(world["onnx"]), "--clean", str(clean_version), "--triggered",
                       str(trig_version / "test"), "--defenses", "none")
    from_trees = _eval("--model", str(world["onnx"]), "--clean", str(world["clean"]), "--triggered",
                       str(world["triggered"]), "--defenses", "none")
    assert byo.table_rows(from_store.output) == byo.table_rows(from_trees.output)
    assert "dataset version" in from_store.output and "ImageSet" in from_store.output
    assert "resized" not in from_store.output


def test_ingest_split_flags(world, tmp_path):
    from detoxops.data import load_version

    args = ["--out", str(tmp_path / "data"), "--no-progress", *PARAMS]
    res = runner.invoke(app, ["data", "ingest", str(world["clean"]), *args])
    assert res.exit_code == 0 and "train 30, test 10 images" in res.output  # the default still splits 80/20
    res = runner.invoke(app, ["data", "ingest", str(world["clean"]), "--split", "train", *args])
    assert res.exit_code == 0, res.output
    assert list(load_version(Path(res.stdout.splitlines()[0]))) == ["train"]
    res = runner.invoke(app, ["data", "ingest", str(world["clean"]), "--split", "all", *args])
    assert res.exit_code == 2 and "--split must be train, test or val" in res.output
    res = runner.invoke(app, ["data", "ingest", str(world["clean"]), "--split", "test", "--no-split", *args])
    assert res.exit_code == 2
    # a split layout whose test/ lacks a class: the error names the flags; --no-split stores it as it is
    layout = tmp_path / "layout"
    shutil.copytree(world["clean"], layout / "train")
    shutil.copytree(world["triggered"], layout / "test")
    res = runner.invoke(app, ["data", "ingest", str(layout), *args])
    assert res.exit_code == 1 and "class 'cat' has no images in split 'test'" in res.output
    assert "--no-split" in res.output
    res = runner.invoke(app, ["data", "ingest", str(layout), "--no-split", *args])
    assert res.exit_code == 0, res.output
    splits = load_version(Path(res.stdout.splitlines()[0]))
    assert len(splits["train"]) == 40 and len(splits["test"]) == 36
    assert splits["test"].class_counts()[byo.CLASSES.index("cat")] == 0
    res = runner.invoke(app, ["data", "ingest", str(layout), "--split", "test", *args])
    assert res.exit_code == 1 and "use --no-split" in res.output


def test_guard_contract_endpoint(world):
    """A classifier served under the guard's contract (detoxops.serving's server, .npy wire, GET /contract) scores
    like the folder; its input size comes from the contract."""
    import threading

    from detoxops.models import load_classifier, predict
    from detoxops.serving import make_server

    model = load_classifier(world["victim"])
    server = make_server(lambda images: predict(model, images), image_size=32, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        args = ["--clean", str(world["clean"]), "--triggered", str(world["triggered"]), "--defenses", "none"]
        served = _eval("--model", server.url, *args)
        assert "http " in served.output and "32x32 input, protocol guard" in served.output
        assert byo.table_rows(served.output)["none"] == byo.table_rows(_eval("--model", str(world["victim"]), *args).output)["none"]
    finally:
        server.shutdown()
        server.server_close()
    unreachable = _eval("--model", server.url, *args, ok=False)
    assert unreachable.exit_code == 1 and "unreachable" in unreachable.output
