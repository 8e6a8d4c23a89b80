"""The design's worked case as a real run: `classify --report` on 1000 inputs of which 90 %
repeat (100 distinct web-size photos, each 10 times, shuffled), from an empty cache, and the same
with `--no-cache`; the reports show the measured p and q. Also checks the model against the
measurement: n·c / (q·N) predicts the run's wall time from its own CPU per item.

Usage: python3 bench/cost_report.py [--out bench/results/cost-report-DATE.md]
Needs: cargo build --release; python3 bench/make_photos.py
"""
import argparse, json, os, random, subprocess, sys, tempfile
from common import header

root = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(root)
binary = os.path.join(repo, "target", "release", "singlepoint")
ap = argparse.ArgumentParser()
ap.add_argument("--out", default=None)
args = ap.parse_args()
web = sorted(os.path.join(root, "data", "web", f) for f in os.listdir(os.path.join(root, "data", "web")))
repeat = [p for p in web[:100] for _ in range(10)]
random.Random(7).shuffle(repeat)

lines = header("Cost report: the worked case as a real run", "cost_report.py")
for name, extra in [("cache on, empty at start", None), ("--no-cache", ["--no-cache"])]:
    with tempfile.TemporaryDirectory() as d:
        report = os.path.join(d, "report.json")
        cmd = [binary, "classify", "-", "--backend", "ort", "--no-fetch", "-q", "--report",
               "--report-json", report] + (extra or ["--cache-dir", os.path.join(d, "cache")])
        p = subprocess.run(cmd, input="\n".join(repeat) + "\n", capture_output=True, text=True, cwd=repo)
        if p.returncode != 0:
            sys.exit(p.stderr)
        r = json.load(open(report))
    n, N, q = r["items"], r["workers"], r["parallel_efficiency"]
    predicted = n * r["cpu_per_item"] / (q * N)
    lines += ["", f"## {name}", "", f"`{' '.join(os.path.relpath(c, repo) if c.startswith(repo) else c for c in cmd[:3])} "
              f"{' '.join(cmd[3:7])} --report ...` (paths on stdin)", "", "```", p.stderr.strip(), "```", "",
              f"- measured p = {r['hit_rate']:.3f}, q = {q:.3f}; the model's run time n·c/(q·N) = "
              f"{n} × {1e3 * r['cpu_per_item']:.2f} ms / ({q:.3f} × {N}) = {predicted:.2f} s vs measured "
              f"{r['run_seconds']:.2f} s ({predicted / r['run_seconds']:.2f}×)"]
text = "\n".join(lines) + "\n"
print(text)
if args.out:
    open(args.out, "w").write(text)
