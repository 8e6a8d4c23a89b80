"""Any ONNX model over Triton's own client: `singlepoint serve` runs three non-image models as
`tensor` models and every answer equals onnxruntime-Python's on the same inputs.

- the digits CNN, from a folder holding only its model.onnx (no manifest: served from the
  ONNX signature), and again with the manifest `singlepoint init` wrote;
- the random MobileNetV2, with the manifest `singlepoint init` wrote;
- token-pool (tests/models, two int64 inputs of variable length, ids and mask), with the
  manifest `init --pad ... --max-length 64` wrote: concurrent requests of different lengths
  batch together (the server's metrics show more than one item per engine run) and each
  answer equals its own unbatched onnxruntime run;
- dtypes (tests/models): float16, int32, int8, uint8 and bool inputs and outputs.

Also: output selection and binary_data_output, every bad-input case named in a 400 (wrong
datatype, rank or length, over max_length, a mask of another length than its ids), `init`
refusing an image model without its preprocessing (exit 2, naming the fields) and a file
that is not ONNX. scripts/test runs it after the Rust tests.

Usage: python3 tests/compat/tensor_models_check.py PATH/TO/singlepoint
"""
import os
import random
import shutil
import subprocess
import sys
import tempfile
import urllib.request

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient

import serve

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
binary = os.path.abspath(sys.argv[1])
repo = tempfile.mkdtemp(prefix="singlepoint-tensor-")


def place(name, source):
    os.makedirs(os.path.join(repo, name))
    shutil.copy(os.path.join(root, source), os.path.join(repo, name, "model.onnx"))
    return os.path.join(repo, name, "model.onnx")


def init(onnx, *flags):
    return subprocess.run([binary, "init", onnx, *flags], capture_output=True, text=True)


place("digits", "models/digits-cnn/model.onnx")
for name, source, flags in [
    ("digits-init", "models/digits-cnn/model.onnx", []),
    ("mobilenet", "tests/models/mobilenet-v2-random/model.onnx", []),
    ("token-pool", "tests/models/token-pool/model.onnx",
     ["--pad", "input_ids=0", "--pad", "attention_mask=0", "--max-length", "64"]),
    ("dtypes", "tests/models/dtypes/model.onnx", []),
]:
    r = init(place(name, source), *flags)
    assert r.returncode == 0, (name, r.stdout, r.stderr)

# init refuses what it cannot know, and what is not ONNX.
scratch = tempfile.mkdtemp(prefix="singlepoint-init-")
shutil.copy(os.path.join(root, "models/digits-cnn/model.onnx"), scratch)
r = init(os.path.join(scratch, "model.onnx"), "--task", "image-classification")
assert r.returncode == 2, (r.returncode, r.stderr)
for field in ["preprocess.mean", "preprocess.std", "preprocess.resize", "--mean", "--std"]:
    assert field in r.stderr, (field, r.stderr)
assert not os.path.exists(os.path.join(scratch, "model.json"))
with open(os.path.join(scratch, "photo.onnx"), "wb") as f:
    f.write(open(os.path.join(root, "photos", "coffee.png"), "rb").read())
r = init(os.path.join(scratch, "photo.onnx"))
assert r.returncode == 2 and "not an ONNX model" in r.stderr, (r.returncode, r.stderr)

proc, address = serve.start(binary, ["--no-cache", "--model-repository", repo, "--instances", "1",
                                     "--max-batch-size", "8", "--max-queue-delay", "30ms"], root)


def session(name):
    return ort.InferenceSession(os.path.join(repo, name, "model.onnx"),
                                providers=["CPUExecutionProvider"])


def metric(name, model):
    text = urllib.request.urlopen(f"http://{address}/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="{model}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} for {model}")


def tensor_input(name, array, datatype, binary_data=True):
    inp = httpclient.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array, binary_data=binary_data)
    return inp


def refused(model, inputs, expected):
    try:
        client.infer(model, inputs)
    except httpclient.InferenceServerException as e:
        assert expected in str(e), (expected, str(e))
        return
    raise AssertionError(f"{model}: accepted a request that should say `{expected}`")


try:
    client = httpclient.InferenceServerClient(address, concurrency=16)
    rng = np.random.default_rng(5)

    # The digits CNN, from a bare ONNX file.
    meta = client.get_model_metadata("digits")
    assert meta["inputs"][0]["name"] == "input" and meta["outputs"][0]["name"] == "logits", meta
    x = rng.random((3, 1, 8, 8), dtype=np.float32)
    want = session("digits").run(None, {"input": x})[0]
    for model, binary_data in [("digits", False), ("digits", True), ("digits-init", True)]:
        got = client.infer(model, [tensor_input("input", x, "FP32", binary_data)]).as_numpy("logits")
        assert np.allclose(got, want, atol=1e-5), f"{model} differs from onnxruntime"

    # MobileNetV2 (random weights), with init's manifest.
    x = rng.standard_normal((2, 3, 224, 224), dtype=np.float32)
    want = session("mobilenet").run(None, {"input": x})[0]
    got = client.infer("mobilenet", [tensor_input("input", x, "FP32")]).as_numpy("logits")
    assert got.shape == (2, 1000) and np.allclose(got, want, rtol=1e-3, atol=1e-4), \
        float(np.abs(got - want).max())

    # token-pool: requests of different lengths, concurrently; each equals its unbatched run.
    tp = session("token-pool")
    executions0 = metric("singlepoint_model_executions_total", "token-pool")
    items0 = metric("singlepoint_items_computed_total", "token-pool")

    # tritonclient.http is not thread-safe; async_infer keeps 16 requests in flight.
    requests = []
    for seed in range(96):
        r = random.Random(seed)
        length = r.randint(1, 40)
        rows = r.randint(1, 2)
        ids = np.array([[r.randrange(32) for _ in range(length)] for _ in range(rows)], dtype=np.int64)
        mask = np.ones_like(ids)
        if length > 2 and r.random() < 0.5:
            mask[:, -1] = 0  # a request may carry its own padding
        pending = client.async_infer("token-pool", [tensor_input("input_ids", ids, "INT64"),
                                                    tensor_input("attention_mask", mask, "INT64")])
        requests.append((length, ids, mask, pending))
    lengths = []
    for length, ids, mask, pending in requests:
        result = pending.get_result()
        want = tp.run(None, {"input_ids": ids, "attention_mask": mask})
        for name, w in zip(["pooled", "token_scores", "lengths"], want):
            got = result.as_numpy(name)
            assert got.shape == w.shape, (name, got.shape, w.shape)
            assert np.allclose(got, w, atol=1e-5), (name, length, float(np.abs(got - w).max()))
        lengths.append(length)
    runs = metric("singlepoint_model_executions_total", "token-pool") - executions0
    items = metric("singlepoint_items_computed_total", "token-pool") - items0
    assert items / runs > 1.0, f"no batching across lengths: {items} items in {runs} runs"
    batching = f"{items:.0f} items of {len(set(lengths))} lengths in {runs:.0f} engine runs"

    # Output selection and binary output.
    ids = np.array([[3, 1, 4, 1, 5]], dtype=np.int64)
    mask = np.ones_like(ids)
    result = client.infer("token-pool", [tensor_input("input_ids", ids, "INT64", False),
                                         tensor_input("attention_mask", mask, "INT64", False)],
                          outputs=[httpclient.InferRequestedOutput("lengths", binary_data=True)])
    assert result.as_numpy("lengths").tolist() == [[5]]
    assert result.as_numpy("pooled") is None, "an output that was not asked for came back"

    # Every other element type.
    dt = session("dtypes")
    feeds = {
        "x_f16": rng.standard_normal((4, 3)).astype(np.float16),
        "x_i32": rng.integers(-1000, 1000, (4, 2), dtype=np.int32),
        "x_i8": rng.integers(-127, 127, (4, 2), dtype=np.int8),
        "x_u8": rng.integers(0, 255, (4, 4), dtype=np.uint8),
        "x_b": rng.random((4, 3)) < 0.5,
    }
    types = {"x_f16": "FP16", "x_i32": "INT32", "x_i8": "INT8", "x_u8": "UINT8", "x_b": "BOOL"}
    want = dict(zip([o.name for o in dt.get_outputs()], dt.run(None, feeds)))
    for binary_data in (True, False):
        result = client.infer("dtypes", [tensor_input(k, v, types[k], binary_data) for k, v in feeds.items()])
        for name, w in want.items():
            got = result.as_numpy(name)
            assert got.dtype == w.dtype and np.array_equal(got, w), (name, binary_data, got, w)

    # Bad input: each a 400 that names the problem.
    ids = np.array([[1, 2, 3]], dtype=np.int64)
    mask = np.ones_like(ids)
    refused("token-pool", [tensor_input("input_ids", ids.astype(np.int32), "INT32"),
                           tensor_input("attention_mask", mask, "INT64")], "the model takes INT64, not INT32")
    refused("token-pool", [tensor_input("input_ids", ids[0], "INT64"),
                           tensor_input("attention_mask", mask, "INT64")], "has 1 dimensions; the model takes 2")
    refused("token-pool", [tensor_input("input_ids", np.zeros((1, 65), np.int64), "INT64"),
                           tensor_input("attention_mask", np.ones((1, 65), np.int64), "INT64")],
            "over the model's max_length of 64")
    refused("token-pool", [tensor_input("input_ids", ids, "INT64"),
                           tensor_input("attention_mask", np.ones((1, 2), np.int64), "INT64")],
            "axes named `sequence` must have one size")
    refused("token-pool", [tensor_input("input_ids", ids, "INT64")], "input `attention_mask` is missing")
    refused("digits", [tensor_input("input", np.zeros((1, 1, 8, 9), np.float32), "FP32")],
            "axis 3 is 9; the model takes 8")
    assert client.is_model_ready("token-pool")
    print(f"tritonclient: digits (bare ONNX and init's manifest), MobileNetV2 and token-pool equal onnxruntime "
          f"{ort.__version__}; {batching}; FP16/INT32/INT8/UINT8/BOOL exact; output selection, "
          f"bad inputs and init refusals named")
finally:
    proc.terminate()
    proc.wait(timeout=30)
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
