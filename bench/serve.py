"""`singlepoint serve` vs a Python peer (LitServe + PIL + onnxruntime, its own batching on),
under a compiled load generator (wrk) on loopback, at concurrency 1, 4, 16 and 64.

Four servers start side by side and take turns at each concurrency (the others stopped with
SIGSTOP meanwhile), so that every ratio comes from one run on the same noisy machine:
- ours, cache off (`--no-cache`), every request a new input;
- the peer, tuned, the same requests (bench/peer_serve.py: 2 worker processes, 1 ONNX Runtime
  thread each, max batch 8, 2 ms batch timeout, as ours: 2 instances, max batch 8, 2 ms delay);
- the peer with LitServe's and ONNX Runtime's defaults for workers and threads (1 worker
  process, one intra-op thread per core), batching on as above: what a user runs without tuning;
- ours, cache on, 90 % repeated inputs (nine requests in ten repeat one of 100 photos).
Every request is one web-size JPEG (bench/data/web, 1024-1600 px) as a multipart upload; the
new inputs carry a nonce in a JPEG comment, so no cache or coalescing can answer them.
Reports throughput, p50, p99 and peak RSS (the peer's summed over its processes) per run, the
time from process start to ready, and the peer's versions.

Usage: python3 bench/serve.py [--seconds 10] [--concurrency 1,4,16,64] [--photos 200]
Needs: cargo build --release; wrk (apt-get install wrk); pip install litserve python-multipart
"""
import argparse, glob, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile
import threading, time, urllib.request
from importlib.metadata import version

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Side, free_port, header, photo_list

root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
binary = os.path.join(root, "target", "release", "singlepoint")
model_dir = os.path.join(root, "models", "efficientnet-lite0")

p = argparse.ArgumentParser()
p.add_argument("--seconds", type=int, default=10)
p.add_argument("--concurrency", default="1,4,16,64")
p.add_argument("--photos", type=int, default=200)
p.add_argument("--out", default=None)
args = p.parse_args()
levels = [int(c) for c in args.concurrency.split(",")]

for need, hint in [(binary, "cargo build --release"), (shutil.which("wrk"), "apt-get install wrk")]:
    if not need or not os.path.exists(need):
        sys.exit(f"missing {need or 'wrk'}: run `{hint}`")
listing = photo_list(root, args.photos)


def ours(name, extra, mode):
    port = free_port()
    return Side(listing, name, [binary, "serve", "--port", str(port), "--max-batch-size", "8",
                       "--max-queue-delay", "2ms", "--max-queue", "1024", *extra],
                f"http://127.0.0.1:{port}", "/v1/models/efficientnet-lite0/classify?top_k=1", mode,
                "/v2/health/ready")


# Time to ready: five fresh starts of ours (bundled model, ONNX Runtime already fetched).
ready = []
for _ in range(5):
    s = ours("ready", ["--no-cache"], "unique")
    ready.append(s.ready_s)
    s.stop()

cache_dir = tempfile.mkdtemp()
peer_port = free_port()
peer2_port = free_port()
sides = [
    ours("singlepoint, cache off", ["--no-cache"], "unique"),
    Side(listing, "LitServe peer, tuned", [sys.executable, os.path.join(root, "bench", "peer_serve.py"),
                                  model_dir, str(peer_port)],
         f"http://127.0.0.1:{peer_port}", "/predict", "unique", "/health"),
    Side(listing, "LitServe peer, default workers/threads",
         [sys.executable, os.path.join(root, "bench", "peer_serve.py"), model_dir,
          str(peer2_port), "--workers", "1", "--ort-threads", "0"],
         f"http://127.0.0.1:{peer2_port}", "/predict", "unique", "/health"),
    ours("singlepoint, cache on, 90 % repeats", ["--cache-dir", cache_dir], "repeat90"),
]
results = {s.name: {} for s in sides}
for s in sides:
    s.pause()
try:
    for s in sides:  # warm-up: first sessions, page cache, allocator
        s.load(4, 2)
    for c in levels:
        for s in sides:
            r = s.load(c, args.seconds)
            results[s.name][c] = r
            print(f"c={c:<3} {s.name:<38} {r['rps']:7.1f} req/s  p50 {r['p50_us']/1e3:7.1f} ms  "
                  f"p99 {r['p99_us']/1e3:7.1f} ms  RSS {r['rss_mib']:6.0f} MiB  "
                  f"errors {r['non2xx'] + r['timeout'] + r['connect'] + r['read']}", flush=True)
    os.killpg(sides[3].proc.pid, signal.SIGCONT)
    metrics = urllib.request.urlopen(sides[3].url + "/metrics").read().decode()
finally:
    for s in sides:
        s.stop()

def metric(name, labels=""):
    return sum(float(l.rsplit(" ", 1)[1]) for l in metrics.splitlines()
               if l.startswith(name) and labels in l and not l.startswith("#"))

hits = metric("singlepoint_model_cache_hits_total")
misses = metric("singlepoint_model_cache_misses_total")
off, peer, peer_default, on = (results[s.name] for s in sides)
lines = header("Serving: singlepoint serve vs LitServe, under wrk", "serve.py") + [
    f"- load: wrk {subprocess.run(['wrk', '-v'], capture_output=True, text=True).stdout.split()[1]}"
    f", 1 thread, {args.seconds} s per run, loopback; one web-size JPEG (1024-1600 px) per request"
    " as a multipart upload; new inputs carry a nonce in a JPEG comment",
    f"- peer: LitServe {version('litserve')}, FastAPI {version('fastapi')}, uvicorn "
    f"{version('uvicorn')}, onnxruntime {version('onnxruntime')}, Pillow {version('pillow')}, "
    f"numpy {version('numpy')}; tuned: 2 worker processes x 1 ORT thread; defaults: 1 worker "
    "process, ORT's default threads (one per core); both max batch 8, batch timeout 2 ms",
    "- ours: 2 instances x 1 ORT thread, 2 decode workers, max batch 8, max queue delay 2 ms",
    f"- time from process start to `/v2/health/ready` = 200 (ours, 5 starts): median "
    f"{1e3 * statistics.median(ready):.0f} ms, max {1e3 * max(ready):.0f} ms",
    f"- cache on: measured hit rate p = {hits / max(hits + misses, 1):.3f} "
    f"({hits:.0f} hits, {misses:.0f} misses over all its runs)",
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
lines += ["", "| concurrency | ours cache off / tuned peer (req/s) | p99 ours / tuned peer | "
          "ours cache off / default peer (req/s) | p99 ours / default peer | "
          "ours cache on / ours cache off (req/s) |", "|---|---|---|---|---|---|"]
for c in levels:
    lines.append(f"| {c} | {off[c]['rps'] / peer[c]['rps']:.2f}x | "
                 f"{off[c]['p99_us'] / peer[c]['p99_us']:.2f} | "
                 f"{off[c]['rps'] / peer_default[c]['rps']:.2f}x | "
                 f"{off[c]['p99_us'] / peer_default[c]['p99_us']:.2f} | "
                 f"{on[c]['rps'] / off[c]['rps']:.2f}x |")
report = "\n".join(lines) + "\n"
print(report)
if args.out:
    open(args.out, "w").write(report)
