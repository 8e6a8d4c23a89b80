"""Regenerates crates/backend/tests/conformance.json: the engine conformance suite, as data.

Each case names a model, an input built deterministically from a recipe, and the outputs that
onnxruntime (Python) gives for it. Every engine must reproduce them within the case's tolerance.
Run from the repository root: python3 scripts/conformance_golden.py (needs numpy, onnxruntime).
"""
import json, math
import numpy as np
import onnxruntime as ort

def synthetic(shape, seed):
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.float64)
    return np.sin(i * 0.0137 + seed).astype(np.float32).reshape(shape)

def digits(offset, batch):
    data = np.fromfile("models/digits-cnn/test_f32.bin", dtype="<f4").reshape(-1, 1, 8, 8)
    return data[offset:offset + batch]

cases = []
def add(name, model, recipe, x, tolerance):
    sess = ort.InferenceSession(model + "/model.onnx", providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    cases.append({
        "name": name, "model": model, "input": recipe, "input_shape": list(x.shape),
        "tolerance": tolerance, "output_shape": list(y.shape),
        "output": [round(float(v), 6) for v in y.reshape(-1)],
    })

for off, b in [(0, 1), (1, 3), (10, 8)]:
    add(f"digits test items {off}..{off + b}", "models/digits-cnn",
        {"kind": "digits_test_set", "offset": off}, digits(off, b), 1e-3)
for b, seed in [(1, 0.0), (2, 1.5)]:
    add(f"efficientnet synthetic batch {b}", "models/efficientnet-lite0",
        {"kind": "sine", "seed": seed}, synthetic((b, 3, 224, 224), seed), 2e-2)

with open("crates/backend/tests/conformance.json", "w") as f:
    json.dump({"generated_by": "scripts/conformance_golden.py with onnxruntime " + ort.__version__,
               "cases": cases}, f, indent=1)
