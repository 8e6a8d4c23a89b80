"""The hand-written Python peer of `singlepoint classify`: PIL + onnxruntime, batches of 16,
the bundled model's preprocessing (shorter side 256 bilinear, centre crop 224, (x-127)/128).

Prints `Image N: label` like singlepoint, then one JSON line on stderr with the CPU time of
each stage: decode (open + convert), preprocess (resize, crop, normalise), inference.
Usage: python3 bench/peer_classify.py MODEL_DIR IMAGE...
"""
import json, sys, time
import numpy as np
import onnxruntime as ort
from PIL import Image
from pil_preprocess import preprocess as preprocess_image

model_dir, paths = sys.argv[1], sys.argv[2:]
labels = open(f"{model_dir}/labels.txt").read().splitlines()
sess = ort.InferenceSession(f"{model_dir}/model.onnx", providers=["CPUExecutionProvider"])
decode = preprocess = inference = 0.0

def prepare(path):
    global decode, preprocess
    t0 = time.thread_time()
    img = Image.open(path).convert("RGB")
    t1 = time.thread_time()
    x = preprocess_image(img)
    preprocess += time.thread_time() - t1
    decode += t1 - t0
    return x

index = 0
for start in range(0, len(paths), 16):
    batch = np.stack([prepare(p) for p in paths[start:start + 16]])
    t0 = time.process_time()
    logits = sess.run(None, {"input": batch})[0]
    inference += time.process_time() - t0
    for row in logits:
        print(f"Image {index}: {labels[int(np.argmax(row))]}")
        index += 1
n = max(index, 1)
print(json.dumps({"decode_core_ms": 1e3 * decode / n, "preprocess_core_ms": 1e3 * preprocess / n,
                  "inference_core_ms": 1e3 * inference / n}), file=sys.stderr)
