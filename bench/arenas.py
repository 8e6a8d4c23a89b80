"""What one malloc arena per core (the binary's default since the soak test) costs in
throughput, against glibc's own default of eight per core (MALLOC_ARENA_MAX=16 on 2 cores):
two `singlepoint serve --no-cache` side by side, taking turns under wrk (the other stopped),
every request a new web-size JPEG. Reports req/s, p99 and peak RSS per run, and the ratio.

Usage: python3 bench/arenas.py [--seconds 10] [--rounds 3] [--concurrency 16]
Needs: cargo build --release; wrk (apt-get install wrk)
"""
import argparse, os, statistics, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Side, free_port, header, photo_list

root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
binary = os.path.join(root, "target", "release", "singlepoint")
p = argparse.ArgumentParser()
p.add_argument("--seconds", type=int, default=10)
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--concurrency", type=int, default=16)
p.add_argument("--out", default=None)
args = p.parse_args()
listing = photo_list(root, 200)


def ours(name, env):
    port = free_port()
    return Side(listing, name, [binary, "serve", "--port", str(port), "--no-cache"],
                f"http://127.0.0.1:{port}", "/v1/models/efficientnet-lite0/classify?top_k=1",
                "unique", "/v2/health/ready", env={**os.environ, **env})


sides = [ours("one arena per core (default)", {}),
         ours("MALLOC_ARENA_MAX=16 (glibc's 8 per core)", {"MALLOC_ARENA_MAX": "16"})]
runs = {s.name: [] for s in sides}
try:
    for s in sides:
        s.pause()
    for s in sides:
        s.load(4, 2)  # warm-up
    for _ in range(args.rounds):
        for s in sides:
            r = s.load(args.concurrency, args.seconds)
            runs[s.name].append(r)
            print(f"{s.name:<42} {r['rps']:7.1f} req/s  p99 {r['p99_us']/1e3:7.1f} ms  "
                  f"RSS {r['rss_mib']:5.0f} MiB", flush=True)
finally:
    for s in sides:
        s.stop()

lines = header("Malloc arenas: one per core vs glibc's default, under wrk", "arenas.py") + [
    f"- load: wrk, 1 thread, concurrency {args.concurrency}, {args.seconds} s per run, "
    f"{args.rounds} rounds alternating; web-size JPEGs with a nonce, cache off",
    "", "| side | req/s (median) | p99 ms (median) | peak RSS MiB (max) | runs req/s |",
    "|---|---|---|---|---|"]
med = {}
for name, rs in runs.items():
    med[name] = statistics.median(r["rps"] for r in rs)
    lines.append(f"| {name} | {med[name]:.1f} | "
                 f"{statistics.median(r['p99_us'] for r in rs) / 1e3:.1f} | "
                 f"{max(r['rss_mib'] for r in rs):.0f} | "
                 f"{', '.join('%.1f' % r['rps'] for r in rs)} |")
a, b = (med[s.name] for s in sides)
lines += ["", f"Throughput ratio, one per core / glibc default: {a / b:.3f}"]
report = "\n".join(lines) + "\n"
print(report)
if args.out:
    open(args.out, "w").write(report)
