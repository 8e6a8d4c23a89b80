"""Speech: which thread layout `singlepoint transcribe` should default to, in one run.

Each layout transcribes the 17 speech clips of tests/data/speech twice over (34 files, no
cache, 8 in flight), the layouts interleaved `--rounds` times so that drift on a shared
machine falls on both: one encoder thread whose sessions use every core (the default) against
an encoder thread per core with one intra-op thread each; the decoder has one thread in both.
Reports audio seconds per second and CPU-seconds from transcribe's own summary line.

Usage: python3 bench/transcribe_layouts.py [--rounds 2] [--out FILE]
Needs: cargo build --release (or SINGLEPOINT_BIN)
"""
import argparse, glob, os, re, statistics, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import header

root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
binary = os.environ.get("SINGLEPOINT_BIN", os.path.join(root, "target", "release", "singlepoint"))
clips = sorted(glob.glob(os.path.join(root, "tests", "data", "speech", "*.wav")))
p = argparse.ArgumentParser()
p.add_argument("--rounds", type=int, default=2)
p.add_argument("--out", default=None)
args = p.parse_args()
cores = os.cpu_count()
layouts = [("one encoder thread, its sessions on every core (default)", 1, cores),
           ("an encoder thread per core, 1 intra-op thread each", cores, 1)]

def run(encoders, threads):
    r = subprocess.run([binary, "transcribe", *clips, *clips, "--no-cache", "--concurrency", "8",
                        "--encoders", str(encoders), "--encoder-threads", str(threads),
                        "--decoder-threads", "1"], cwd=root, capture_output=True, text=True, check=True)
    summary = r.stderr.strip().splitlines()[-1]
    m = re.search(r"\(([\d.]+) audio seconds per second.*?([\d.]+) CPU-seconds$", summary)
    return float(m.group(1)), float(m.group(2)), summary

results = {name: [] for name, _, _ in layouts}
for _ in range(args.rounds):
    for name, encoders, threads in layouts:
        results[name].append(run(encoders, threads))
        print(name, results[name][-1][2], flush=True)

lines = header("Speech: transcribe's thread layouts (Whisper tiny.en)", "transcribe_layouts.py") + [
    f"- binary: `{binary}`; 34 files (the 17 clips twice), `--no-cache --concurrency 8 --decoder-threads 1`; "
    f"{args.rounds} rounds, layouts interleaved",
    "",
    "| layout | flags | audio-s per s (each round) | CPU-seconds (each round) |",
    "|---|---|---|---|",
]
for name, encoders, threads in layouts:
    rs = results[name]
    lines.append(f"| {name} | `--encoders {encoders} --encoder-threads {threads}` | "
                 f"{', '.join(f'{r[0]:.1f}' for r in rs)} | {', '.join(f'{r[1]:.2f}' for r in rs)} |")
(a, b) = (results[layouts[0][0]], results[layouts[1][0]])
speed = statistics.median(x[0] for x in a) / statistics.median(x[0] for x in b)
cpu = statistics.median(x[1] for x in a) / statistics.median(x[1] for x in b)
lines += ["", f"- default / encoder per core: **{speed:.2f}×** the throughput (medians), {cpu:.2f}× the CPU-seconds"]
report = "\n".join(lines) + "\n"
print(report)
if args.out:
    with open(args.out, "w") as f:
        f.write(report)
