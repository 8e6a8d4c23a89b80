"""Triton's own Python client (`tritonclient.http`) against `singlepoint serve`, unchanged:
health, metadata, and inference with JSON tensors, binary tensors, encoded images as BYTES and
the classification extension; and an object detector (YOLOv3-tiny) answering BYTES images with
num_dets / det_boxes / det_scores / det_classes, options as request parameters. scripts/test runs
it after the Rust tests.

Usage: python3 tests/compat/tritonclient_check.py PATH/TO/singlepoint
"""
import os, sys
import numpy as np
import tritonclient.http as httpclient
from PIL import Image

import serve

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL = "efficientnet-lite0"
proc, address = serve.start(sys.argv[1], ["--no-cache"], root)


def pil_tensor(path):
    img = Image.open(path).convert("RGB")
    w, h = img.size
    nw, nh = (256, round(256 * h / w)) if w <= h else (round(256 * w / h), 256)
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = round((nw - 224) / 2), round((nh - 224) / 2)
    img = img.crop((left, top, left + 224, top + 224))
    return ((np.asarray(img, dtype=np.float32) - 127.0) / 128.0).transpose(2, 0, 1)


try:
    client = httpclient.InferenceServerClient(address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL)
    assert meta["inputs"][0]["name"] == "input" and meta["outputs"][0]["name"] == "logits", meta
    assert client.get_server_metadata()["name"] == "singlepoint"

    photos = ["chelsea.png", "coffee.png", "grace_hopper.jpg"]
    x = np.stack([pil_tensor(os.path.join(root, "photos", p)) for p in photos])
    rows = {}
    for binary in (False, True):
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("logits", binary_data=binary)
        rows[binary] = client.infer(MODEL, [inp], outputs=[out]).as_numpy("logits")
        assert rows[binary].shape == (3, 1000), rows[binary].shape
    assert np.allclose(rows[False], rows[True], atol=1e-4), "JSON and binary outputs differ"
    top1 = rows[True].argmax(axis=1).tolist()
    assert top1 == [282, 967, 400], top1  # tiger cat, espresso, academic gown (the reference top-1s)

    images = np.array([[open(os.path.join(root, "photos", p), "rb").read()] for p in photos],
                      dtype=np.object_).reshape(3)
    inp = httpclient.InferInput("input", [3], "BYTES")
    inp.set_data_from_numpy(images, binary_data=True)
    out = httpclient.InferRequestedOutput("logits", binary_data=True, class_count=2)
    result = client.infer(MODEL, [inp], outputs=[out]).as_numpy("logits")
    assert result.shape == (3, 2), result.shape
    best = [int(r[0].decode().split(":")[1]) for r in result]
    assert best == top1, (best, top1)

    try:
        bad = httpclient.InferInput("pixels", list(x.shape), "FP32")
        bad.set_data_from_numpy(x)
        client.infer(MODEL, [bad])
        sys.exit("an unknown input name was accepted")
    except httpclient.InferenceServerException as e:
        assert "unknown input `pixels`" in str(e), e
    from importlib.metadata import version
    print(f"tritonclient {version('tritonclient')}: health, metadata, JSON/binary FP32, BYTES images, "
          f"classification and errors all work (top-1 {best})")
finally:
    proc.terminate()
    proc.wait(timeout=30)

proc, address = serve.start(sys.argv[1], ["--no-cache", "--model", "models/yolov3-tiny"], root)
try:
    client = httpclient.InferenceServerClient(address)
    meta = client.get_model_metadata("yolov3-tiny")
    names = [o["name"] for o in meta["outputs"]]
    assert names == ["num_dets", "det_boxes", "det_scores", "det_classes"], names
    files = ["tests/data/detection/opencv_messi5.jpg", "tests/data/detection/vtest_f251.png"]
    images = np.array([open(os.path.join(root, f), "rb").read() for f in files], dtype=np.object_)
    inp = httpclient.InferInput("images", [2], "BYTES")
    inp.set_data_from_numpy(images, binary_data=True)
    outs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in names]
    result = client.infer("yolov3-tiny", [inp], outputs=outs)
    counts = result.as_numpy("num_dets")[:, 0].tolist()
    boxes, scores, classes = (result.as_numpy(n) for n in names[1:])
    assert counts[0] == 5 and counts[1] > 5, counts
    # The strongest detection in the football photo: a sports ball (COCO-80 class 32), 0.79.
    assert classes[0, 0] == 32 and abs(scores[0, 0] - 0.79) < 0.01, (classes[0], scores[0])
    assert boxes.shape == (2, max(counts), 4), boxes.shape
    assert (scores[0, counts[0]:] == 0).all(), "padding past an image's count is zeros"
    people = client.infer("yolov3-tiny", [inp], outputs=outs,
                          parameters={"classes": "person", "score": 0.4})
    assert people.as_numpy("num_dets")[0, 0] == 1
    assert (people.as_numpy("det_classes")[1, :people.as_numpy("num_dets")[1, 0]] == 0).all()
    print(f"tritonclient: a detector's BYTES images in, EfficientNMS outputs out ({counts} detections), "
          "parameters as options")
finally:
    proc.terminate()
    proc.wait(timeout=30)
