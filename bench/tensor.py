"""A tensor model over the Open Inference Protocol's binary extension: `singlepoint serve` vs
the strongest Python server built here for the same model (bench/peer_tensor.py: FastAPI +
uvicorn, dynamic batching on an asyncio queue, onnxruntime sessions on a thread pool, binary
in and out), under wrk on loopback.

The model is the random-weight MobileNetV2 (tests/models/mobilenet-v2-random), served by ours
from a folder holding only its ONNX file (a `tensor` model). Each request is one distinct
[1, 3, 224, 224] FP32 input (64 of them in turn; both servers run without a cache, and ours
reports how many items it coalesced, which must be 0). Sides, each measured alone while the
others are stopped (SIGSTOP), so every ratio comes from one run on the same machine:
- ours: 2 instances x 1 ORT thread, max batch 8, max queue delay 2 ms;
- the peer, tuned the same way: 2 sessions x 1 ORT thread, max batch 8, 2 ms;
- the peer with ONNX Runtime's default threads (one intra-op thread per core), 1 session.
Reports throughput, p50, p99 and peak RSS per side and the ratios.

Usage: python3 bench/tensor.py [--seconds 15] [--concurrency 16] [--out FILE]
Needs: cargo build --release; wrk (apt-get install wrk); pip install fastapi uvicorn onnxruntime
"""
import argparse, json, os, shutil, signal, subprocess, sys, tempfile, urllib.request
from importlib.metadata import version

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Side, free_port, header

root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
binary = os.path.join(root, "target", "release", "singlepoint")
onnx = os.path.join(root, "tests", "models", "mobilenet-v2-random", "model.onnx")

p = argparse.ArgumentParser()
p.add_argument("--seconds", type=int, default=15)
p.add_argument("--concurrency", default="16")
p.add_argument("--out", default=None)
args = p.parse_args()
levels = [int(c) for c in args.concurrency.split(",")]
for need, hint in [(binary, "cargo build --release"), (shutil.which("wrk"), "apt-get install wrk")]:
    if not need or not os.path.exists(need):
        sys.exit(f"missing {need or 'wrk'}: run `{hint}`")

# 64 distinct requests, written once; wrk sends them in turn.
work = tempfile.mkdtemp(prefix="singlepoint-tensor-bench-")
repo = os.path.join(work, "repo")
os.makedirs(os.path.join(repo, "mobilenet"))
shutil.copy(onnx, os.path.join(repo, "mobilenet", "model.onnx"))
rng = np.random.default_rng(3)
paths = []
for i in range(64):
    x = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    path = os.path.join(work, f"req{i}.bin")
    open(path, "wb").write(head + x.tobytes())
    open(path + ".len", "w").write(f"{len(head)}\n")
    paths.append(path)
listing = os.path.join(work, "requests.txt")
open(listing, "w").write("\n".join(paths) + "\n")

ours_port, peer_port, peer2_port = free_port(), free_port(), free_port()
path = "/v2/models/mobilenet/infer"
sides = [
    Side(listing, "singlepoint", [binary, "serve", "--port", str(ours_port), "--no-cache",
                                  "--model-repository", repo, "--instances", "2",
                                  "--max-batch-size", "8", "--max-queue-delay", "2ms",
                                  "--max-queue", "1024"],
         f"http://127.0.0.1:{ours_port}", path, "unique", "/v2/health/ready", script="tensor.lua"),
    Side(listing, "Python peer, tuned", [sys.executable, os.path.join(root, "bench", "peer_tensor.py"),
                                         onnx, str(peer_port)],
         f"http://127.0.0.1:{peer_port}", path, "unique", "/v2/health/ready", script="tensor.lua"),
    Side(listing, "Python peer, ORT default threads",
         [sys.executable, os.path.join(root, "bench", "peer_tensor.py"), onnx, str(peer2_port),
          "--sessions", "1", "--ort-threads", "0"],
         f"http://127.0.0.1:{peer2_port}", path, "unique", "/v2/health/ready", script="tensor.lua"),
]
results = {s.name: {} for s in sides}
for s in sides:
    s.pause()
try:
    for s in sides:  # warm-up
        s.load(4, 3)
    for c in levels:
        for s in sides:
            r = s.load(c, args.seconds)
            results[s.name][c] = r
            print(f"c={c:<3} {s.name:<34} {r['rps']:7.1f} req/s  p50 {r['p50_us']/1e3:7.1f} ms  "
                  f"p99 {r['p99_us']/1e3:7.1f} ms  RSS {r['rss_mib']:6.0f} MiB  "
                  f"errors {r['non2xx'] + r['timeout'] + r['connect'] + r['read']}", flush=True)
    os.killpg(sides[0].proc.pid, signal.SIGCONT)
    metrics = urllib.request.urlopen(sides[0].url + "/metrics").read().decode()
finally:
    for s in sides:
        s.stop()
    shutil.rmtree(work, ignore_errors=True)


def metric(name):
    return sum(float(l.rsplit(" ", 1)[1]) for l in metrics.splitlines()
               if l.startswith(name + "{") and not l.startswith("#"))


items = metric("singlepoint_items_computed_total")
runs = metric("singlepoint_model_executions_total")
coalesced = metric("singlepoint_coalesced_total")
ours, peer, peer_default = (results[s.name] for s in sides)
lines = header("Tensor model over OIP binary: singlepoint serve vs a Python server", "tensor.py") + [
    f"- load: wrk {subprocess.run(['wrk', '-v'], capture_output=True, text=True).stdout.split()[1]}, "
    f"1 thread, {args.seconds} s per run, loopback; each request one distinct [1, 3, 224, 224] "
    "FP32 input (602 112 bytes) as OIP binary, the output asked for as binary",
    "- model: MobileNetV2, random weights (tests/models/mobilenet-v2-random), ours from a "
    "folder with only the ONNX file",
    f"- peer: FastAPI {version('fastapi')}, uvicorn {version('uvicorn')}, onnxruntime "
    f"{version('onnxruntime')}, numpy {version('numpy')} (bench/peer_tensor.py); tuned: 2 "
    "sessions x 1 ORT thread on a 2-thread pool; default: 1 session, ORT's default threads; "
    "both max batch 8, batch timeout 2 ms",
    "- ours: 2 instances x 1 ORT thread, max batch 8, max queue delay 2 ms, no cache",
    f"- ours over all runs: {items:.0f} items in {runs:.0f} engine runs "
    f"(mean batch {items / max(runs, 1):.2f}), {coalesced:.0f} coalesced",
    "",
    "| concurrency | side | req/s | p50 ms | p99 ms | peak RSS MiB | errors |",
    "|---|---|---|---|---|---|---|",
]
for c in levels:
    for s in sides:
        r = results[s.name][c]
        errors = r["non2xx"] + r["timeout"] + r["connect"] + r["read"]
        lines.append(f"| {c} | {s.name} | {r['rps']:.1f} | {r['p50_us']/1e3:.1f} | "
                     f"{r['p99_us']/1e3:.1f} | {r['rss_mib']:.0f} | {errors} |")
lines += ["", "| concurrency | ours / tuned peer (req/s) | p99 ours / tuned peer | "
          "RSS ours / tuned peer | ours / default peer (req/s) | p99 ours / default peer |",
          "|---|---|---|---|---|---|"]
for c in levels:
    lines.append(f"| {c} | {ours[c]['rps'] / peer[c]['rps']:.2f}x | "
                 f"{ours[c]['p99_us'] / peer[c]['p99_us']:.2f} | "
                 f"{ours[c]['rss_mib'] / peer[c]['rss_mib']:.2f} | "
                 f"{ours[c]['rps'] / peer_default[c]['rps']:.2f}x | "
                 f"{ours[c]['p99_us'] / peer_default[c]['p99_us']:.2f} |")
report = "\n".join(lines) + "\n"
print(report)
if args.out:
    open(args.out, "w").write(report)
