"""Memory stays flat in the number of inputs: peak RSS of `singlepoint classify FOLDER` over
1,000 and 100,000 files (hard links to a few 8x8 PNGs, so the set costs no disk), with the digits
CNN so that the run is quick. The folder is walked lazily and batches in flight are bounded;
peak RSS should not grow with the file count.

Usage: python3 bench/flat_memory.py [--bin target/release/singlepoint]
Writes bench/results/flat-memory-DATE.md.
"""
from common import header
import argparse, datetime, os, subprocess, sys, time
from PIL import Image

root = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(root)

def folder(n):
    d = os.path.join(root, "data", f"tiny-{n}")
    if not os.path.isdir(d) or len(os.listdir(d)) != n:
        os.makedirs(d, exist_ok=True)
        for i in range(n):
            # A file system allows only so many links to one file: a new source every 50,000.
            src = os.path.join(root, "data", f"tiny-{i // 50_000}.png")
            if not os.path.exists(src):
                Image.new("L", (8, 8), 128).save(src)
            p = os.path.join(d, f"{i:06d}.png")
            if not os.path.exists(p):
                os.link(src, p)
    return d

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(repo, "target", "release", "singlepoint"))
    args = ap.parse_args()
    rows = []
    for n in [1_000, 100_000]:
        d = folder(n)
        cmd = [args.bin, "classify", d, "--model", os.path.join(repo, "models", "digits-cnn"), "--no-cache", "--format", "jsonl"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=repo)
        lines = sum(1 for _ in proc.stdout)
        err = proc.stderr.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0 or lines != n:
            sys.exit(f"{n} files: exit {status}, {lines} lines: {err[-1000:]}")
        rows.append(f"| {n:,} | {wall:.1f} | {usage.ru_maxrss / 1024:.0f} |")
        print(rows[-1], file=sys.stderr)
    text = "\n".join(header("Peak memory vs number of inputs", "flat_memory.py") + [
        "- runs `singlepoint classify FOLDER --model models/digits-cnn --no-cache --format jsonl`\n",
        "| files | wall s | peak RSS MiB |", "|---|---|---|", *rows]) + "\n"
    print(text)
    with open(os.path.join(root, "results", f"flat-memory-{datetime.date.today()}.md"), "w") as f:
        f.write(text)

if __name__ == "__main__":
    main()
