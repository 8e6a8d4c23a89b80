"""Engine throughput of onnxruntime-Python: the Python half of bench/engine.py.

Usage: python3 bench/engine_peer.py MODEL.onnx THREADS SECONDS BATCH...
Same loop as crates/backend/examples/engine_throughput.rs: one session, THREADS intra-op
threads, constant synthetic input, a warm-up run, then a timed loop. One JSON line per batch.
"""
import json, sys, time
import numpy as np
import onnxruntime as ort

path, threads, seconds, batches = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), [int(b) for b in sys.argv[4:]]
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
opts.inter_op_num_threads = 1
sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
for batch in batches:
    shape = [batch] + list(inp.shape[1:])
    n = int(np.prod(shape))
    x = ((np.arange(n) % 251).astype(np.float32) - 125.0) / 128.0
    x = x.reshape(shape)
    sess.run(None, {inp.name: x})
    runs, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {inp.name: x})
        runs += 1
    secs = time.perf_counter() - t0
    print(json.dumps({"engine": "onnxruntime-python", "batch": batch, "threads": threads, "runs": runs,
                      "images_per_s": round(runs * batch / secs, 2)}))
