"""Whole-tool benchmark: `singlepoint classify` vs the hand-written Python peer
(bench/peer_classify.py: PIL + onnxruntime, batches of 16) on the same photos, in one run.

Runs the two alternately (ours, peer, ours, peer, ...) `--runs` times per photo set so that
machine noise hits both alike, and reports medians of wall time, images/s, CPU core-ms per
image (user + sys, all threads), peak RSS, and the per-stage core-ms each tool reports.
Writes a Markdown report to bench/results/.

With `--int8 DIR` (a version `singlepoint quantize` wrote), `singlepoint classify --model DIR`
runs as a third tool in the same alternation, so its ratios are taken in the same run too.

Usage: python3 bench/classify.py [--runs 3] [--sets web camera] [--bin target/release/singlepoint]
       [--int8 DIR] [--out FILE]
Needs bench/make_photos.py to have been run, and Pillow, numpy, onnxruntime for the peer.
"""
from common import header
import argparse, datetime, json, os, platform, re, statistics, subprocess, sys, time

root = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(root)

def run_measured(cmd):
    """Runs cmd, returning (stdout, stderr, wall_s, cpu_s, maxrss_mib)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=repo)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd[:3])}... failed: {err.decode()[-2000:]}")
    return out.decode(), err.decode(), wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024

def ours_stages(stderr):
    m = re.search(r"decode ([\d.]+), preprocess ([\d.]+), inference ([\d.]+)", stderr)
    return {"decode": float(m[1]), "preprocess": float(m[2]), "inference": float(m[3])} if m else {}

def peer_stages(stderr):
    line = [l for l in stderr.splitlines() if l.startswith("{")][-1]
    d = json.loads(line)
    return {"decode": d["decode_core_ms"], "preprocess": d["preprocess_core_ms"], "inference": d["inference_core_ms"]}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sets", nargs="+", default=["web", "small", "camera"])
    ap.add_argument("--bin", default=os.path.join(repo, "target", "release", "singlepoint"))
    ap.add_argument("--extra", nargs="*", default=[], help="extra flags for singlepoint classify")
    ap.add_argument("--int8", help="an int8 version of the model, run as a third tool")
    ap.add_argument("--out", help="the report (default bench/results/classify-DATE.md)")
    args = ap.parse_args()
    model_dir = os.path.join(repo, "models", "efficientnet-lite0")
    report = header("classify: singlepoint vs hand-written Python (PIL + onnxruntime)", "classify.py")
    import onnxruntime, PIL, numpy
    report.append(f"- peer: Python {platform.python_version()}, Pillow {PIL.__version__}, numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}")
    report.append(f"- runs: {args.runs} alternating pairs per set; medians shown\n")
    for name in args.sets:
        folder = os.path.join(root, "data", name)
        files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
        ours_cmd = [args.bin, "classify", folder, "--backend", "ort", "--no-fetch", "--no-cache", "--format", "jsonl", "--top-k", "1", *args.extra]
        peer_cmd = [sys.executable, os.path.join(root, "peer_classify.py"), model_dir, *files]
        tools = [("singlepoint", ours_cmd, ours_stages), ("python", peer_cmd, peer_stages)]
        if args.int8:
            tools.insert(1, ("singlepoint int8", [*ours_cmd, "--model", args.int8], ours_stages))
        results = {who: [] for who, _, _ in tools}
        for r in range(args.runs):
            for who, cmd, stages in tools:
                out, err, wall, cpu_s, rss = run_measured(cmd)
                results[who].append({"wall": wall, "cpu": cpu_s, "rss": rss, "stages": stages(err), "out": out})
                print(f"{name} run {r} {who}: {wall:.2f} s, {len(files) / wall:.1f} img/s, cpu {cpu_s:.1f} s, rss {rss:.0f} MiB", file=sys.stderr)
        ours_top1 = [json.loads(l)["top_k"][0]["label"] for l in results["singlepoint"][0]["out"].splitlines()]
        peer_top1 = [l.split(": ", 1)[1] for l in results["python"][0]["out"].splitlines()]
        agree = sum(a == b for a, b in zip(ours_top1, peer_top1))
        n = len(files)
        def med(who, key):
            return statistics.median(x[key] for x in results[who])
        def med_stage(who, stage):
            return statistics.median(x["stages"].get(stage, float("nan")) for x in results[who])
        ratio = med("python", "wall") / med("singlepoint", "wall")
        report.append(f"## {name}: {n} photos (`bench/data/{name}`)\n")
        report.append("| tool | wall s | images/s | CPU core-ms / image | decode | preprocess | inference | peak RSS MiB |")
        report.append("|---|---|---|---|---|---|---|---|")
        for who in results:
            report.append(f"| {who} | {med(who, 'wall'):.2f} | {n / med(who, 'wall'):.1f} | {1e3 * med(who, 'cpu') / n:.1f} | "
                          f"{med_stage(who, 'decode'):.1f} | {med_stage(who, 'preprocess'):.1f} | {med_stage(who, 'inference'):.1f} | {med(who, 'rss'):.0f} |")
        walls = {who: ", ".join(f"{x['wall']:.2f}" for x in results[who]) for who in results}
        report.append(f"\n**singlepoint is {ratio:.2f}× faster** (median wall time ratio). All runs, wall s: {'; '.join(f'{w} {walls[w]}' for w in walls)}.")
        report.append(f"Top-1 class agrees with the Python peer on {agree} of {n} photos.")
        if args.int8:
            int8_top1 = [json.loads(l)["top_k"][0]["label"] for l in results["singlepoint int8"][0]["out"].splitlines()]
            ratio8 = med("python", "wall") / med("singlepoint int8", "wall")
            report.append(f"\n**singlepoint int8 (`{args.int8}`) is {ratio8:.2f}× faster than python** and "
                          f"{med('singlepoint', 'wall') / med('singlepoint int8', 'wall'):.2f}× faster than singlepoint fp32 (median wall time ratios); "
                          f"its top-1 agrees with singlepoint fp32 on {sum(a == b for a, b in zip(ours_top1, int8_top1))} of {n} photos.")
        report.append(f"Per-stage figures are CPU core-ms per image as each tool reports them (singlepoint: worker-thread CPU time; python: thread time for decode/preprocess, process time for inference).\n")
    text = "\n".join(report) + "\n"
    print(text)
    out = args.out or os.path.join(root, "results", f"classify-{datetime.date.today()}.md")
    with open(out, "w") as f:
        f.write(text)
    print(f"wrote {out}", file=sys.stderr)

if __name__ == "__main__":
    main()
