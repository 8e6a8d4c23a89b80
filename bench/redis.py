"""The Redis tier, in one run:
- hit latency in process for each tier (memory; disk with memory off; Redis with memory and
  disk off), 2000 stored rows of 4000 bytes, random lookups (crates/cache/examples/tier_latency.rs);
- throughput under wrk of one replica vs two replicas sharing Redis vs two replicas each with its
  own cache (no Redis), on the same 2 cores: 90 % repeated inputs (bench/serve.lua repeat90), all
  replicas starting cold, the load split evenly over the replicas (one wrk per replica, run
  together), memory tier on and disk off everywhere.

Usage: python3 bench/redis.py [--seconds 10] [--concurrency 16] [--out FILE]
Needs: cargo build --release --example tier_latency -p singlepoint-cache; cargo build --release;
redis-server and wrk (apt-get install redis-server wrk); python3 bench/make_photos.py
"""
import argparse, glob, json, os, re, signal, socket, subprocess, sys, tempfile, time, urllib.request
from common import free_port, header, photo_list

root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
binary = os.path.join(root, "target", "release", "singlepoint")
example = os.path.join(root, "target", "release", "examples", "tier_latency")
p = argparse.ArgumentParser()
p.add_argument("--seconds", type=int, default=10)
p.add_argument("--concurrency", type=int, default=16)
p.add_argument("--out", default=None)
args = p.parse_args()
for f in (binary, example):
    if not os.path.exists(f):
        sys.exit(f"missing {f}: see Needs in this script's docstring")
listing = photo_list(root)


def start(cmd, ready):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    while time.time() - t0 < 60:
        try:
            if ready():
                return proc
        except OSError:
            pass
        time.sleep(0.02)
    sys.exit(f"{cmd[0]} did not start")


def stop(proc):
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def redis():
    port = free_port()
    proc = start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                 lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True)
    return proc, f"redis://127.0.0.1:{port}"


def replica(extra):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start([binary, "serve", "--port", str(port), "--cache-disk", "0", "--max-queue", "1024", *extra],
                 lambda: urllib.request.urlopen(url + "/v2/health/ready", timeout=1).status == 200)
    return proc, url


def load(urls, mode="repeat90", same_inputs=False, lag=0.0):
    """One wrk per replica, the connections split evenly; with `same_inputs` every replica gets
    the same stream of new inputs, the second starting `lag` seconds later. Returns the req/s of
    each replica and the errors."""
    per = max(1, args.concurrency // len(urls))
    tag = f"{time.time_ns()}"
    procs = []
    for i, u in enumerate(urls):
        if i and lag:
            time.sleep(lag)
        procs.append(subprocess.Popen(
            ["wrk", "-t1", f"-c{per}", f"-d{args.seconds}s", "--timeout", "30s",
             "-s", os.path.join(root, "bench", "serve.lua"),
             u + "/v1/models/efficientnet-lite0/classify?top_k=1", "--",
             listing, mode, tag if same_inputs else f"{tag}-{i}"],
            stdout=subprocess.PIPE, text=True))
    rates, errors = [], 0
    for proc in procs:
        out = proc.communicate()[0]
        r = json.loads(next(l for l in out.splitlines() if l.startswith("WRKJSON "))[8:])
        rates.append(r["requests"] / r["seconds"])
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors += int(m.group(1)) if m else 0
    return rates, errors


def redis_hits(url):
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    m = re.search(r'singlepoint_cache_hits_total\{tier="redis"\} (\S+)', text)
    return float(m.group(1)) if m else 0.0


lines = header("Redis tier: hit latency per tier, replicas sharing Redis", "redis.py")
rproc, rurl = redis()
try:
    out = subprocess.run([example, rurl], capture_output=True, text=True, check=True).stdout
    lat = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    lines += ["", "Hit latency in process (2000 rows of 4000 bytes, 20000 random lookups):", "",
              "| tier | p50 µs | p99 µs | mean µs |", "|---|---|---|---|"]
    lines += [f"| {r['tier']} | {r['p50_us']} | {r['p99_us']} | {r['mean_us']} |" for r in lat]
    results = {}
    # (name, replicas, shared Redis, wrk mode, same inputs at every replica, lag of the second)
    setups = [("one replica", 1, True, "repeat90", False, 0.0),
              ("two replicas sharing Redis", 2, True, "repeat90", False, 0.0),
              ("two replicas, no Redis", 2, False, "repeat90", False, 0.0),
              ("two replicas sharing Redis, same new inputs, B 3 s behind", 2, True, "unique", True, 3.0),
              ("two replicas, no Redis, same new inputs, B 3 s behind", 2, False, "unique", True, 3.0)]
    for name, n, shared, mode, same, lag in setups:
        subprocess.run(["redis-cli", "-u", rurl, "flushall"], capture_output=True)
        reps = [replica(["--cache-redis", rurl] if shared else []) for _ in range(n)]
        try:
            rates, errors = load([u for _, u in reps], mode, same, lag)
            hits = redis_hits(reps[-1][1])
        finally:
            for proc, _ in reps:
                stop(proc)
        results[name] = (rates, errors, hits)
        print(f"{name}: {rates} req/s, {errors} errors, last replica's Redis hits {hits:.0f}", flush=True)
    lines += ["", f"Throughput under wrk, {args.concurrency} connections in all, {args.seconds} s per replica, "
              "web-size photos as multipart uploads, every setup starting cold. `repeat90`: nine requests in ten "
              "repeat one of 100 photos, the rest new to that replica; `same new inputs`: both replicas get the "
              "same stream of never-seen inputs, replica B starting 3 s after A:", "",
              "| setup | req/s per replica | in all | errors | Redis hits at the last replica |",
              "|---|---|---|---|---|"]
    lines += [f"| {k} | {' + '.join(f'{r:.1f}' for r in v[0])} | {sum(v[0]):.1f} | {v[1]} | {v[2]:.0f} |"
              for k, v in results.items()]
    one = sum(results["one replica"][0])
    shared_b = results["two replicas sharing Redis, same new inputs, B 3 s behind"][0][1]
    alone_b = results["two replicas, no Redis, same new inputs, B 3 s behind"][0][1]
    lines += ["", f"- 90 % repeats: two replicas sharing Redis {sum(results['two replicas sharing Redis'][0]) / one:.2f}x "
              f"one replica, without Redis {sum(results['two replicas, no Redis'][0]) / one:.2f}x: the same 2 cores "
              "serve every replica here, so a second replica adds no compute, and each replica's hot set is in its "
              "own memory after one pass.",
              f"- Same new inputs at both: replica B answers {shared_b:.1f} req/s with Redis vs {alone_b:.1f} "
              f"without ({shared_b / alone_b:.2f}x): what A computed is a hit at B."]
finally:
    stop(rproc)
text = "\n".join(lines) + "\n"
print(text)
if args.out:
    open(args.out, "w").write(text)
