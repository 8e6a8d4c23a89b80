"""Engine throughput: singlepoint's ONNX Runtime engine (Rust, `ort`) vs onnxruntime-Python on
the same ONNX Runtime release, same threads, same batch sizes, in one run.

For each model the two alternate `--rounds` times (ours, python, ours, python, ...); each round
measures every batch size for `--seconds`. Reports the median images/s, the spread (min..max)
of each, and the ratio of medians. Writes bench/results/engine-DATE.md.

Usage: python3 bench/engine.py [--rounds 3] [--seconds 4] [--threads 2]
Needs the example built: cargo build --release -p singlepoint-backend --example engine_throughput
(the script builds it); the random MobileNetV2 is tests/models/mobilenet-v2-random.
"""
from common import header
import argparse, datetime, json, os, platform, statistics, subprocess, sys

root = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(root)

def lines(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=repo).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batches", nargs="+", default=["1", "8", "32"])
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "singlepoint-backend", "--example", "engine_throughput"], check=True, cwd=repo)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(repo, "target"))
    example = os.path.join(target, "release", "examples", "engine_throughput")
    mobilenet = os.path.join(repo, "tests", "models", "mobilenet-v2-random", "model.onnx")
    models = {"EfficientNet-Lite0": os.path.join(repo, "models", "efficientnet-lite0", "model.onnx"),
              "MobileNetV2 (random weights)": mobilenet}
    import onnxruntime
    report = header("Engine throughput: singlepoint (Rust, ort) vs onnxruntime-Python", "engine.py") + [
              f"- ONNX Runtime {onnxruntime.__version__} on both sides, {args.threads} intra-op threads, one session, thread spinning on (onnxruntime's default; `classify` turns it off and runs one single-threaded session per core instead)",
              f"- {args.rounds} alternating rounds of {args.seconds} s per batch size; median images/s, spread min..max\n",
              "| model | batch | singlepoint img/s | spread | onnxruntime-Python img/s | spread | ratio |",
              "|---|---|---|---|---|---|---|"]
    for name, path in models.items():
        ours, peer = {}, {}
        for r in range(args.rounds):
            # Spinning on, as onnxruntime-Python has it by default: the same engine settings.
            for rec in lines([example, path, "ort", str(args.threads), "1", str(args.seconds), *args.batches]):
                ours.setdefault(rec["batch"], []).append(rec["images_per_s"])
            for rec in lines([sys.executable, os.path.join(root, "engine_peer.py"), path, str(args.threads), str(args.seconds), *args.batches]):
                peer.setdefault(rec["batch"], []).append(rec["images_per_s"])
            print(f"{name} round {r}: ours {ours} python {peer}", file=sys.stderr)
        for b in sorted(ours):
            mo, mp = statistics.median(ours[b]), statistics.median(peer[b])
            report.append(f"| {name} | {b} | {mo:.1f} | {min(ours[b]):.1f}..{max(ours[b]):.1f} | {mp:.1f} | {min(peer[b]):.1f}..{max(peer[b]):.1f} | {mo / mp:.2f} |")
    text = "\n".join(report) + "\n"
    print(text)
    with open(os.path.join(root, "results", f"engine-{datetime.date.today()}.md"), "w") as f:
        f.write(text)

if __name__ == "__main__":
    main()
