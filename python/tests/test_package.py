"""The Python package against the CLI and the reference outputs: same answers, errors in
their place, the cache, numpy in and out, the GIL released while computing."""

import gc
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import singlepoint as sp

from conftest import jsonl

PHOTOS = sorted(p.name for p in (Path(__file__).resolve().parents[2] / "photos").iterdir() if p.suffix in (".png", ".jpg"))


def test_the_seed_script_runs_with_only_the_module_names_changed(root, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(root / "photos" / "chelsea.png", images / "chelsea.jpg")
    script = textwrap.dedent(
        """
        import singlepoint as lepton_ai
        import singlepoint as single_point

        model = lepton_ai.load_model('model.json')
        images = lepton_ai.process_images('images/*.jpg')
        results = single_point.compute(images)
        for i, result in enumerate(results):
            print(f'Image {i}: {result}')
        """
    )
    # model.json: the bundled classifier's manifest, next to its files, as a user's would be.
    for name in ("model.json", "model.onnx", "labels.txt", "label_groups.json"):
        shutil.copy(root / "models" / "efficientnet-lite0" / name, tmp_path / name)
    env = dict(os.environ, SINGLEPOINT_CACHE_DIR=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "Image 0: cat\n", (run.stdout, run.stderr)


def test_answers_equal_the_cli_for_the_bundled_photos(root, cli, cache_dir):
    model = sp.Model(cache=False)
    results = model.compute(sp.process_images(str(root / "photos")))
    assert [Path(r.path).name for r in results] == PHOTOS
    run = cli("classify", "photos/", "--format", "jsonl", "--no-cache", "--top-k", "5")
    assert run.returncode == 0, run.stderr
    expected = jsonl(run.stdout)
    assert len(results) == len(expected) == len(PHOTOS)
    for got, want in zip(results, expected):
        assert got.ok and got.source == "computed"
        assert got.label == want["label"], (got, want)
        assert [label for label, _ in got.top_k] == [t["label"] for t in want["top_k"]]
        for (_, p), t in zip(got.top_k, want["top_k"]):
            assert abs(p - t["probability"]) < 1e-5
    assert str(results[PHOTOS.index("chelsea.png")]) == "cat"


def test_bytes_paths_and_patterns_give_the_same_answers(root):
    model = sp.Model(cache=False)
    by_path = model.compute([str(root / "photos" / p) for p in PHOTOS])
    by_bytes = model.compute([(p, (root / "photos" / p).read_bytes()) for p in PHOTOS])
    by_glob = model.compute(str(root / "photos" / "*.png"))
    assert [r.label for r in by_path] == [r.label for r in by_bytes]
    assert [r.top_k for r in by_path] == [r.top_k for r in by_bytes]
    assert [r.path for r in by_bytes] == PHOTOS
    pngs = [r.label for r, p in zip(by_path, PHOTOS) if p.endswith(".png")]
    assert [r.label for r in by_glob] == pngs


def test_an_unreadable_image_is_an_error_in_its_place(root, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    inputs = [str(root / "photos" / "chelsea.png"), str(broken), str(tmp_path / "missing.png"), str(root / "photos" / "coffee.png")]
    results = sp.Model(cache=False).compute(inputs)
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert results[0].ok and results[0].label == "cat"
    assert not results[1].ok and results[1].source == "failed"
    assert str(results[1]).startswith("error: ") and results[1].label is None
    assert not results[2].ok and "missing.png" in results[2].path
    assert results[3].ok
    # The same in memory: a bad blob fails alone.
    blobs = [("good", (root / "photos" / "chelsea.png").read_bytes()), ("bad", b"GIF89a garbage")]
    results = sp.Model(cache=False).compute(blobs)
    assert results[0].label == "cat" and results[1].error


def test_a_second_run_is_answered_by_the_cache(root, cache_dir):
    model = sp.load_model(cache_dir=cache_dir)
    first = sp.compute(sp.process_images(str(root / "photos")))
    assert {r.source for r in first} == {"computed"}
    assert model.last_run()["model_executions"] > 0
    second = sp.compute(sp.process_images(str(root / "photos")))
    assert {r.source for r in second} == {"cache"}
    assert model.last_run()["model_executions"] == 0
    assert [r.top_k for r in first] == [r.top_k for r in second]
    # While a model holds the disk tier, another one on the same folder says it cannot have it.
    busy = sp.Model(cache_dir=cache_dir)
    assert any("cache" in w for w in busy.warnings), busy.warnings
    del busy
    # Once the model is gone (say, the process ended), the next one reads what it stored.
    sp.load_model(cache=False)
    del model
    gc.collect()
    later = sp.Model(cache_dir=cache_dir)
    assert later.warnings == []
    again = later.compute(str(root / "photos"))
    assert {r.source for r in again} == {"cache"}
    # cache=False never reads it.
    assert {r.source for r in sp.Model(cache=False).compute(str(root / "photos"))} == {"computed"}


def _digits(root):
    pixels = np.frombuffer((root / "models/digits-cnn/test_f32.bin").read_bytes(), dtype="<f4").reshape(-1, 8, 8)
    labels = np.frombuffer((root / "models/digits-cnn/test_labels_u8.bin").read_bytes(), dtype="u1")
    # As 8-bit images: what a PNG can hold, so that the CLI and the array see the same pixels.
    gray = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    return gray, labels


def test_a_numpy_array_in_equals_the_cli_on_the_same_pixels(root, cli, tmp_path):
    from PIL import Image

    gray, labels = _digits(root)
    n = 40
    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(n):
        Image.fromarray(gray[i]).save(folder / f"{i:03}.png")
    model = sp.Model(str(root / "models/digits-cnn"), cache=False, top_k=10)
    # The manifest's preprocessing: pixel / 255, NCHW.
    array = (gray[:n].astype(np.float32) / np.float32(255.0)).reshape(n, 1, 8, 8)
    from_array = model.compute(array)
    run = cli("classify", str(folder), "--model", "models/digits-cnn", "--format", "jsonl", "--no-cache", "--top-k", "10")
    assert run.returncode == 0, run.stderr
    expected = jsonl(run.stdout)
    assert [r.path for r in from_array] == [f"row {i}" for i in range(n)]
    for got, want in zip(from_array, expected):
        assert got.label == want["label"]
        probs = {label: p for label, p in got.top_k}
        for t in want["top_k"]:
            assert abs(probs[t["label"]] - t["probability"]) < 1e-5
    accuracy = np.mean([int(r.label) == int(l) for r, l in zip(from_array, labels[:n])])
    assert accuracy >= 0.9
    # A wrong shape is refused as a whole, naming what the model takes.
    with pytest.raises(ValueError, match="8"):
        model.compute(np.zeros((2, 1, 9, 9), np.float32))


def test_a_tensor_model_takes_and_gives_numpy_arrays(root):
    ort = pytest.importorskip("onnxruntime")
    model = sp.Model(str(root / "tests/models/token-pool"), cache=False)
    assert model.task == "tensor"
    ids = np.array([[1, 7, 20, 3], [1, 5, 3, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    rows = model.run({"input_ids": ids, "attention_mask": mask})
    session = ort.InferenceSession(str(root / "tests/models/token-pool/model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    want = session.run(None, {"input_ids": ids, "attention_mask": mask})
    assert len(rows) == 2
    for i, row in enumerate(rows):
        assert row.ok
        for name, w in zip(names, want):
            np.testing.assert_allclose(row[name], w[i], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="attention_mask"):
        model.run({"input_ids": ids})
    with pytest.raises(ValueError, match="INT64"):
        model.run({"input_ids": ids.astype(np.float32), "attention_mask": mask})


def test_embeddings_match_the_reference(root):
    reference = json.loads((root / "tests/data/text/expected_embeddings.json").read_text())
    sentences = reference["sentences"]
    model = sp.load_model("all-minilm-l6-v2", cache=False)
    found = model.embed([s["text"] for s in sentences])
    for got, want in zip(found, sentences):
        assert got.ok, got.error
        w = np.asarray(want["embedding"], dtype=np.float32)
        cosine = float(got.vector @ w / (np.linalg.norm(got.vector) * np.linalg.norm(w)))
        assert cosine >= 0.999, (want["index"], cosine)
        assert got.tokens == want["tokens_used"]
        assert got.truncated == (want["tokens_untruncated"] > want["tokens_used"])
    matrix = model.encode([s["text"] for s in sentences[:3]])
    assert matrix.shape == (3, 384) and matrix.dtype == np.float32
    # Over the limit and refused when asked: an error in its place.
    long = [s["text"] for s in sentences if s["tokens_untruncated"] > s["tokens_used"]]
    assert long, "the reference has a text over the limit"
    refused = model.embed(["short", long[0]], truncate=False)
    assert refused[0].ok and not refused[1].ok and "token" in refused[1].error


def test_detections_equal_the_cli(root, cli):
    image = "tests/data/detection/opencv_messi5.jpg"
    found = sp.Model("yolov3-tiny", cache=False).detect(str(root / image))
    run = cli("detect", image, "--format", "jsonl", "--no-cache")
    assert run.returncode == 0, run.stderr
    want = jsonl(run.stdout)[0]
    assert len(found) == 1 and found[0].ok
    got = found[0].detections
    assert len(got) == len(want["detections"]) > 0
    for g, w in zip(got, want["detections"]):
        assert g.label == w["label"]
        assert abs(g.score - w["score"]) < 1e-4
        assert all(abs(a - b) < 0.05 for a, b in zip(g.box, w["box"])), (g, w)


def test_wrong_calls_raise_and_say_what_was_wrong(root):
    with pytest.raises(ValueError, match="no-such-model"):
        sp.load_model("no-such-model")
    with pytest.raises(ValueError, match="threads"):
        sp.Model(threads=0)
    with pytest.raises(ValueError, match="cache_mem"):
        sp.Model(cache_mem="lots")
    with pytest.raises(ValueError, match="object-detection"):
        sp.Model("yolov3-tiny", cache=False).classify(str(root / "photos"))
    with pytest.raises(TypeError):
        sp.Model(cache=False).compute(12)
    with pytest.raises(ValueError):
        sp.process_images()


def test_the_gil_is_released_while_computing(root):
    model = sp.Model(cache=False, threads=1)
    paths = [str(root / "photos")] * 6
    done = threading.Event()
    ticks = 0

    def work():
        model.compute(paths)
        done.set()

    worker = threading.Thread(target=work)
    started = time.perf_counter()
    worker.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    worker.join()
    elapsed = time.perf_counter() - started
    # Held, the GIL would stop this loop for the whole call; released, it ticks throughout.
    assert elapsed > 0.05
    assert ticks >= elapsed / 0.001 * 0.3, (ticks, elapsed)


def test_process_images_is_lazy_and_lists_what_a_run_takes(root, tmp_path):
    folder = tmp_path / "later"
    images = sp.process_images(str(folder))
    folder.mkdir()
    shutil.copy(root / "photos" / "coffee.png", folder / "a.png")
    (folder / "notes.txt").write_text("not an image")
    assert [Path(p).name for p in images] == ["a.png"]
    assert repr(images).startswith("Images(")
