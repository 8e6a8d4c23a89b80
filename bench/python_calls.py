"""What one call of the Python package costs beyond its images: `model.compute` on one photo,
repeated, vs on 70 distinct-path photos a call (the engine sessions start once per call, as a
CLI run's do). Needs the package installed from this checkout (pip install ./python).

    python3 bench/python_calls.py --out bench/results/python-calls-2026-12-02.md
"""
import argparse, os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import header  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--out")
    args = ap.parse_args()
    import singlepoint as sp

    photos = sorted(os.path.join(ROOT, "photos", p) for p in os.listdir(os.path.join(ROOT, "photos"))
                    if p.endswith((".png", ".jpg")))
    model = sp.Model(cache=False)
    model.compute(photos[0])  # warm: the runtime library loaded, pages touched
    t = time.perf_counter()
    for _ in range(args.repeat):
        model.compute(photos[0])
    one = (time.perf_counter() - t) / args.repeat
    many = photos * 10
    t = time.perf_counter()
    for _ in range(args.repeat // 2):
        model.compute(many)
    per_call = (time.perf_counter() - t) / (args.repeat // 2)
    runs = model.last_run()
    lines = header("One call of the Python package: fixed cost vs per-image cost", "python_calls.py")
    lines += [
        f"- model: the bundled EfficientNet-Lite0, `sp.Model(cache=False)` ({model.engine}, defaults), release package",
        "",
        "| call | ms per call | ms per image |",
        "|---|---:|---:|",
        f"| one photo | {one * 1000:.1f} | {one * 1000:.1f} |",
        f"| {len(many)} photos (the 7 bundled, 10 times; engine runs {runs['model_executions']}, coalesced {runs['coalesced']}) | {per_call * 1000:.1f} | {per_call * 1000 / len(many):.2f} |",
        "",
        "A call starts the engine sessions (one `ModelService` per run): what the one-photo call costs",
        "beyond the photo's own work is that start.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
