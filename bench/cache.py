"""The result cache on the design's worked case, in one run:

- repeat: 1000 inputs of which 90 % repeat (100 distinct web-size photos, each 10 times, in a
  fixed shuffled order), cache on (a fresh cache folder each run) vs `--no-cache`;
- thrash: 1000 all-distinct web-size photos, cache on (fresh folder) vs `--no-cache`.

Reports end-to-end wall time (process start, model load and all) and steady-state throughput
(singlepoint's own clock, which starts once the engine sessions exist), medians over `--runs`
alternating runs. Writes bench/results/cache-DATE.md.

Usage: python3 bench/cache.py [--runs 3] [--bin target/release/singlepoint]
Needs bench/make_photos.py to have been run.
"""
from common import header
import argparse, datetime, os, platform, random, re, statistics, subprocess, sys, tempfile, time

root = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(root)

def run(cmd, paths):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, input="\n".join(paths) + "\n", capture_output=True, text=True, cwd=repo)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{cmd} failed: {p.stderr[-2000:]}")
    rate = float(re.search(r"([\d.]+) images/s", p.stderr)[1])
    execs = re.search(r"(\d+) model executions", p.stderr)
    return {"wall": wall, "steady": rate, "executions": int(execs[1]) if execs else None, "out": p.stdout}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(repo, "target", "release", "singlepoint"))
    args = ap.parse_args()
    web = sorted(os.path.join(root, "data", "web", f) for f in os.listdir(os.path.join(root, "data", "web")))
    rng = random.Random(7)
    distinct = web[:100]
    repeat = [p for p in distinct for _ in range(10)]
    rng.shuffle(repeat)
    workloads = {"repeat (100 distinct × 10)": repeat, "thrash (1000 distinct)": web[:1000]}
    base = [args.bin, "classify", "-", "--backend", "ort", "--no-fetch", "-q"]
    report = header("Result cache: cache on vs --no-cache", "cache.py") + [
              f"- {args.runs} alternating runs per side; medians. 'cache on' starts from an empty cache folder every run.",
              "- end-to-end: process start to exit; steady state: singlepoint's own images/s, clock started after model load and session creation\n",
              "| workload | side | end-to-end s | steady images/s | model executions |",
              "|---|---|---|---|---|"]
    # -q hides the summary; the runs below parse it, so keep it on stderr.
    base.remove("-q")
    summary = []
    for name, paths in workloads.items():
        res = {"cache on": [], "--no-cache": []}
        for r in range(args.runs):
            with tempfile.TemporaryDirectory() as cache_dir:
                res["cache on"].append(run(base + ["--cache-dir", cache_dir], paths))
            res["--no-cache"].append(run(base + ["--no-cache"], paths))
            print(f"{name} run {r}: on {res['cache on'][-1]['wall']:.2f} s, off {res['--no-cache'][-1]['wall']:.2f} s", file=sys.stderr)
        if res["cache on"][0]["out"] != res["--no-cache"][0]["out"]:
            sys.exit(f"{name}: cache on and off printed different answers")
        med = {side: (statistics.median(x["wall"] for x in v), statistics.median(x["steady"] for x in v)) for side, v in res.items()}
        for side, v in res.items():
            report.append(f"| {name} | {side} | {med[side][0]:.2f} | {med[side][1]:.1f} | {v[0]['executions'] if v[0]['executions'] is not None else 'n/a'} |")
        summary.append(f"- {name}: end-to-end {med['--no-cache'][0] / med['cache on'][0]:.2f}× faster with the cache, steady state {med['cache on'][1] / med['--no-cache'][1]:.2f}× (answers identical)")
    text = "\n".join(report) + "\n\n" + "\n".join(summary) + "\n"
    print(text)
    with open(os.path.join(root, "results", f"cache-{datetime.date.today()}.md"), "w") as f:
        f.write(text)

if __name__ == "__main__":
    main()
