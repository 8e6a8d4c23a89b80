"""Text embeddings: `singlepoint embed` vs a Python script with `tokenizers` + onnxruntime,
batching by length on and off, and `singlepoint serve` vs the strongest Python server built
here for the same job (bench/peer_embed.py), all in one run on the same model file (the
bundled all-MiniLM-L6-v2 int8) and the same thread budget (every core of the machine).

1. Offline, the 3,000 UCI sentences (tests/data/text/uci_sentiment.tsv), one a line:
   - the Python script: the tokenizer's `encode_batch` and one ORT session with one intra-op
     thread per core, batches of 32 in input order padded to their longest, mean pooling and
     L2 normalisation in numpy (the reference recipe); timed from the first text to the last
     vector, the session already created;
   - `singlepoint embed --format npy --no-cache` (release build; one instance per core, one
     ORT thread each; batching by length on, the default), its own steady-state time (the
     summary's "in X s", sessions already created) and the process's wall time;
   - the vectors of both compared (smallest cosine).
2. The mixed-length workload: the UCI sentences with every tenth replaced by a long text (five
   consecutive Lee documents' sentences joined, cut at 256 tokens), singlepoint with batching
   by length on and off (`--no-length-grouping`: input order, 32 at a time, padded to the
   longest), tokens, padded positions and time of each.
3. Served, OpenAI `POST /v1/embeddings` with one distinct UCI sentence per request under wrk at
   `--concurrency` (16): singlepoint serve (no cache, 2 instances x 1 ORT thread, max batch 32,
   max queue delay 2 ms) vs the strongest peer found (2 worker processes sharing the port, each
   1 session x 1 thread, max batch 32, 2 ms: 205 req/s by hand where one process with ORT's
   default threads gave 153, 3 workers 178, 2 workers x 2 threads 159, a 5 ms timeout 131)
   and the one-process peer with ORT's default threads (1 session); each side measured alone
   while the others are stopped.

Usage: python3 bench/embed.py [--seconds 15] [--concurrency 16] [--rounds 1] [--out FILE]
Needs: cargo build --release; wrk; pip install fastapi uvicorn onnxruntime tokenizers numpy
"""
import argparse, json, os, re, shutil, signal, subprocess, sys, tempfile, time, urllib.request
from importlib.metadata import version

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Side, free_port, header

root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
binary = os.environ.get("SINGLEPOINT_BIN", os.path.join(root, "target", "release", "singlepoint"))
model_dir = os.path.join(root, "models", "all-minilm-l6-v2")
onnx = os.path.join(model_dir, "model.onnx")
tokenizer = os.path.join(model_dir, "tokenizer.json")

p = argparse.ArgumentParser()
p.add_argument("--seconds", type=int, default=15)
p.add_argument("--concurrency", default="16")
p.add_argument("--out", default=None)
# Served rounds: each round loads every side once, in turn; the tables show medians.
p.add_argument("--rounds", type=int, default=1)
# wrk threads loading each side. One thread offers enough load here: with embed.lua giving each
# thread its own bodies, -t2 measured the same as -t1 (346 vs 351-359 req/s, 2026-12-02).
p.add_argument("--wrk-threads", type=int, default=1)
args = p.parse_args()
levels = [int(c) for c in args.concurrency.split(",")]
for need, hint in [(binary, "cargo build --release"), (shutil.which("wrk"), "apt-get install wrk")]:
    if not need or not os.path.exists(need):
        sys.exit(f"missing {need or 'wrk'}: run `{hint}`")
cores = os.cpu_count()
work = tempfile.mkdtemp(prefix="singlepoint-embed-bench-")

texts = [l.rstrip("\n").split("\t", 2)[2]
         for l in open(os.path.join(root, "tests/data/text/uci_sentiment.tsv"), encoding="utf-8")][1:]
uci = os.path.join(work, "uci.txt")
open(uci, "w", encoding="utf-8").write("\n".join(texts) + "\n")
docs = [l.strip() for l in open(os.path.join(root, "tests/data/text/lee_docs.txt"), encoding="utf-8")]
mixed_texts = list(texts)
for k, i in enumerate(range(0, len(texts), 10)):
    mixed_texts[i] = " ".join(docs[(k + j) % len(docs)] for j in range(5))
mixed = os.path.join(work, "mixed.txt")
open(mixed, "w", encoding="utf-8").write("\n".join(mixed_texts) + "\n")


def python_embed(lines, batch=32):
    tok = Tokenizer.from_file(tokenizer)
    tok.enable_truncation(max_length=256)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cores
    session = ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])
    out, tokens, slots = [], 0, 0
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(0, len(lines), batch):
        enc = tok.encode_batch(lines[i:i + batch])
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        h = session.run(None, {"input_ids": ids, "attention_mask": mask,
                               "token_type_ids": np.zeros_like(ids)})[0]
        m = mask[:, :, None].astype(np.float32)
        e = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        out.append(e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12))
        tokens += int(mask.sum())
        slots += mask.size
    return np.concatenate(out), time.perf_counter() - t0, time.process_time() - c0, tokens, slots


def ours_embed(path, *flags):
    npy = os.path.join(work, "out.npy")
    t0 = time.perf_counter()
    r = subprocess.run([binary, "embed", path, "--format", "npy", "-o", npy, "--no-cache", *flags],
                       capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    s = r.stderr.strip().splitlines()[-1]
    m = re.search(r"in ([\d.]+) s on (\w+): (\d+) engine runs.*?(\d+) tokens in (\d+) padded slots.*?([\d.]+) core-s in all", s)
    return {"vectors": np.load(npy), "steady_s": float(m.group(1)), "engine": m.group(2),
            "runs": int(m.group(3)), "tokens": int(m.group(4)), "slots": int(m.group(5)),
            "core_s": float(m.group(6)), "wall_s": wall, "summary": s}


py_vec, py_s, py_cpu, py_tokens, py_slots = python_embed(texts)
ours = ours_embed(uci)
agreement = float(np.min(np.sum(py_vec * ours["vectors"], axis=1)))
print(f"python {py_s:.2f} s; ours {ours['steady_s']:.2f} s steady ({ours['wall_s']:.2f} s process); "
      f"min cosine {agreement:.6f}", flush=True)
on = ours_embed(mixed)
off = ours_embed(mixed, "--no-length-grouping")
py_mixed = python_embed(mixed_texts)
print(f"mixed: on {on['steady_s']:.2f} s, off {off['steady_s']:.2f} s, python {py_mixed[1]:.2f} s", flush=True)

# Served.
bodies = os.path.join(work, "bodies.txt")
open(bodies, "w").write("\n".join(json.dumps({"model": "all-minilm-l6-v2", "input": t}) for t in texts[:2000]) + "\n")
ours_port, peer_port, peer2_port = free_port(), free_port(), free_port()
path = "/v1/embeddings"
peer_cmd = [sys.executable, os.path.join(root, "bench", "peer_embed.py"), onnx, tokenizer]
sides = [
    Side(bodies, "singlepoint", [binary, "serve", "--port", str(ours_port), "--no-cache",
                                 "--model", model_dir, "--instances", "2", "--max-batch-size", "32",
                                 "--max-queue-delay", "2ms", "--max-queue", "1024"],
         f"http://127.0.0.1:{ours_port}", path, "unique", "/v2/health/ready", script="embed.lua", wrk_threads=args.wrk_threads),
    Side(bodies, "Python peer, 2 worker processes",
         peer_cmd + [str(peer_port), "--workers", str(cores), "--sessions", "1", "--ort-threads", "1"],
         f"http://127.0.0.1:{peer_port}", path, "unique", "/health", script="embed.lua", wrk_threads=args.wrk_threads),
    Side(bodies, "Python peer, ORT default threads",
         peer_cmd + [str(peer2_port), "--sessions", "1", "--ort-threads", "0"],
         f"http://127.0.0.1:{peer2_port}", path, "unique", "/health", script="embed.lua", wrk_threads=args.wrk_threads),
]
served = {s.name: {} for s in sides}
for s in sides:
    s.pause()
try:
    for s in sides:
        s.load(4, 3)
    for c, _ in [(c, k) for c in levels for k in range(args.rounds)]:
        for s in sides:
            r = s.load(c, args.seconds)
            served[s.name].setdefault(c, []).append(r)
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


def median_run(runs):
    """The round with the median throughput, and every round's req/s."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    r = dict(ordered[(len(ordered) - 1) // 2])
    r["all_rps"] = [x["rps"] for x in runs]
    return r


served = {name: {c: median_run(rs) for c, rs in by_c.items()} for name, by_c in served.items()}
items, runs = metric("singlepoint_items_computed_total"), metric("singlepoint_model_executions_total")
tokens, slots = metric("singlepoint_padded_tokens_total"), metric("singlepoint_padded_slots_total")
inference_cpu = metric("singlepoint_inference_cpu_seconds_total")
pad = lambda t, s: 100.0 * (1 - t / s)
lines = header("Text embeddings: singlepoint embed and serve vs Python (tokenizers + onnxruntime)", "embed.py") + [
    f"- model: the bundled all-MiniLM-L6-v2 int8 (models/all-minilm-l6-v2), the same file on every side",
    f"- Python: tokenizers {version('tokenizers')}, onnxruntime {version('onnxruntime')}, numpy {version('numpy')}, "
    f"FastAPI {version('fastapi')}, uvicorn {version('uvicorn')}; ours: ONNX Runtime through `ort` (load-dynamic)",
    f"- thread budget: {cores} cores; Python offline: 1 session x {cores} intra-op threads; ours: {cores} instances x 1 thread",
    "",
    "## Offline: the 3,000 UCI sentences",
    "",
    "| side | seconds | texts/s | tokens | padded positions | padding | ",
    "|---|---|---|---|---|---|",
    f"| Python, batches of 32 in input order, padded to the longest | {py_s:.2f} | {3000 / py_s:.0f} | {py_tokens} | {py_slots} | {pad(py_tokens, py_slots):.1f}% |",
    f"| singlepoint embed (steady state) | {ours['steady_s']:.2f} | {3000 / ours['steady_s']:.0f} | {ours['tokens']} | {ours['slots']} | {pad(ours['tokens'], ours['slots']):.1f}% |",
    f"| singlepoint embed (whole process: start, model load, run, write) | {ours['wall_s']:.2f} | {3000 / ours['wall_s']:.0f} | | | |",
    "",
    f"- **singlepoint / Python: {py_s / ours['steady_s']:.2f}x** (steady), {py_s / ours['wall_s']:.2f}x counting its whole process",
    f"- CPU: Python {py_cpu:.2f} core-s, singlepoint {ours['core_s']:.2f} core-s (the run, its summary)",
    f"- same answers: the smallest cosine between the two sides' vectors over the 3,000 texts is {agreement:.6f}",
    "",
    "## Mixed lengths: every tenth sentence replaced by a long text (5 Lee documents, cut at 256 tokens)",
    "",
    "| side | seconds | engine runs | tokens | padded positions | padding |",
    "|---|---|---|---|---|---|",
    f"| singlepoint, batching by length (default) | {on['steady_s']:.2f} | {on['runs']} | {on['tokens']} | {on['slots']} | {pad(on['tokens'], on['slots']):.1f}% |",
    f"| singlepoint, `--no-length-grouping` (input order, 32 a run) | {off['steady_s']:.2f} | {off['runs']} | {off['tokens']} | {off['slots']} | {pad(off['tokens'], off['slots']):.1f}% |",
    f"| Python, batches of 32 in input order | {py_mixed[1]:.2f} | {(len(mixed_texts) + 31) // 32} | {py_mixed[3]} | {py_mixed[4]} | {pad(py_mixed[3], py_mixed[4]):.1f}% |",
    "",
    f"- batching by length on / off: **{off['steady_s'] / on['steady_s']:.2f}x** faster, {off['slots'] / on['slots']:.2f}x fewer padded positions; "
    f"singlepoint (on) / Python: {py_mixed[1] / on['steady_s']:.2f}x",
    "",
    f"## Served: OpenAI /v1/embeddings, one distinct sentence a request, wrk {args.seconds} s per side, loopback",
    "",
    f"- rounds: {args.rounds} (each side loaded once a round, in turn; the median round shown, every round's req/s below)",
    f"- ours over all runs: {items:.0f} texts in {runs:.0f} engine runs (mean batch {items / max(runs, 1):.2f}); "
    f"{tokens:.0f} tokens in {slots:.0f} padded positions ({pad(tokens, max(slots, 1)):.1f}% padding); "
    f"engine CPU {1e3 * inference_cpu / max(items, 1):.2f} core-ms per text",
    "",
    "| concurrency | side | req/s | p50 ms | p99 ms | peak RSS MiB | errors |",
    "|---|---|---|---|---|---|---|",
]
for c in levels:
    for s in sides:
        r = served[s.name][c]
        lines.append(f"| {c} | {s.name} | {r['rps']:.1f} | {r['p50_us']/1e3:.1f} | {r['p99_us']/1e3:.1f} | "
                     f"{r['rss_mib']:.0f} | {r['non2xx'] + r['timeout'] + r['connect'] + r['read']} |")
o, t, d = (served[s.name] for s in sides)
lines += ["", "| concurrency | ours / 2-worker peer (req/s) | p99 ours / 2-worker peer | ours / default peer (req/s) | p99 ours / default peer |",
          "|---|---|---|---|---|"]
for c in levels:
    lines.append(f"| {c} | {o[c]['rps'] / t[c]['rps']:.2f}x | {o[c]['p99_us'] / t[c]['p99_us']:.2f} | "
                 f"{o[c]['rps'] / d[c]['rps']:.2f}x | {o[c]['p99_us'] / d[c]['p99_us']:.2f} |")
lines += ["", "every round's req/s:", ""]
for c in levels:
    for s in sides:
        lines.append(f"- c={c} {s.name}: " + ", ".join(f"{x:.1f}" for x in served[s.name][c]["all_rps"]))
report = "\n".join(lines) + "\n"
print(report)
if args.out:
    open(args.out, "w").write(report)
