"""Ray Data with singlepoint workers vs the plain CLI, on one machine, over 10,000 generated
re-encodings of the bundled photos (each a distinct file, so nothing is a cache hit by chance).

Runs, each timed from the first image to the last answer (and, for Ray, also with the cluster's
start): the plain `singlepoint classify` (release, every core, no cache); the Python package in
one process (`sp.Model(cache=False).compute(folder)`: what the binding costs); Ray Data with two
actors of one thread each (`read_binary_files` -> `map_batches(singlepoint.ray.Classify)`),
with a fresh Redis as the shared tier (memory and disk tiers off); the same job again on new
actors with the Redis now warm. Every run's labels are checked against the CLI's.

Needs: a release build (cargo build --release), the package installed from this checkout
(pip install ./python), ray[data], pillow, redis-server.

    python3 bench/ray_photos.py --out bench/results/ray-2026-12-02.md
"""
import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import free_port, header  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_images(folder, n):
    """n distinct JPEGs (n up to 10,290): the bundled photos, each cropped by a few pixels
    (a different crop each time) and re-encoded at a quality from 80 to 95."""
    from PIL import Image

    photos = sorted(p for p in os.listdir(os.path.join(ROOT, "photos")) if p.endswith((".png", ".jpg")))
    originals = [Image.open(os.path.join(ROOT, "photos", p)).convert("RGB") for p in photos]
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        im = originals[i % len(originals)]
        k = i // len(originals)
        # (dx, dy, grow) differs for every k below 7 * 7 * 30 = 1470: no two files are equal.
        dx, dy, grow = k % 7, (k // 7) % 7, k // 49
        crop = im.crop((dx, dy, im.width - 36 + dx + grow, im.height - 36 + dy + grow))
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=80 + (k % 16))
        with open(os.path.join(folder, f"{i:05}.jpg"), "wb") as f:
            f.write(buf.getvalue())


def cli_labels(binary, folder):
    started = time.perf_counter()
    out = subprocess.run([binary, "classify", folder, "--no-cache", "--format", "jsonl", "--quiet"],
                         capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return wall, {os.path.basename(r["path"]): r["label"] for r in rows}


def start_redis(tmp):
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tmp, "--maxmemory", "2gb"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    sys.exit("redis-server did not start")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="map_batches batch_size")
    ap.add_argument("--work", default="/tmp/singlepoint-ray-bench")
    ap.add_argument("--out")
    args = ap.parse_args()
    binary = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "singlepoint")
    if not os.path.isfile(binary):
        sys.exit(f"no release build at {binary}: cargo build --release")
    folder = os.path.join(args.work, "images")
    if args.images > 10_290:
        sys.exit("at most 10,290 distinct images")
    if not os.path.isdir(folder) or len(os.listdir(folder)) != args.images:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"writing {args.images} images to {folder}", file=sys.stderr)
        make_images(folder, args.images)

    import ray
    import singlepoint as sp
    from singlepoint.ray import Classify

    cli_wall, want = cli_labels(binary, folder)
    print(f"cli: {cli_wall:.1f} s", file=sys.stderr)

    started = time.perf_counter()
    in_process = sp.Model(cache=False).compute(folder)
    package_wall = time.perf_counter() - started
    package_ok = sum(want[os.path.basename(r.path)] == r.label for r in in_process)
    print(f"package: {package_wall:.1f} s", file=sys.stderr)

    redis, url = start_redis(args.work)
    options = {"cache_redis": url, "cache_redis_namespace": f"bench-{os.getpid()}",
               "cache_redis_timeout_ms": 100, "cache_mem": "0", "cache_disk": "0"}
    runs = []
    try:
        t0 = time.perf_counter()
        # One logical CPU more than the actors take, for the tasks that read the files.
        ray.init(num_cpus=args.workers + 1, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_start = time.perf_counter() - t0
        for name in ("Ray, cold Redis", "Ray, warm Redis"):
            started = time.perf_counter()
            ds = ray.data.read_binary_files(folder, include_paths=True)
            rows = ds.map_batches(Classify, fn_constructor_kwargs=options, compute=ray.data.ActorPoolStrategy(size=args.workers),
                                  num_cpus=1, batch_size=args.batch, batch_format="numpy").take_all()
            wall = time.perf_counter() - started
            sources = {}
            for r in rows:
                sources[r["source"]] = sources.get(r["source"], 0) + 1
            same = sum(want[os.path.basename(r["path"])] == r["label"] for r in rows)
            runs.append((name, wall, len(rows), same, sources))
            print(f"{name}: {wall:.1f} s {sources}", file=sys.stderr)
        ray.shutdown()
    finally:
        redis.terminate()

    n = args.images
    lines = header("Ray Data with singlepoint workers vs the plain CLI", "ray_photos.py")
    lines += [
        f"- images: {n} distinct JPEGs re-encoded from the 7 bundled photos (bench/ray_photos.py `make_images`)",
        f"- Ray {ray.__version__}: local cluster (`ray.init(num_cpus={args.workers + 1})`: one logical CPU for the read tasks, started in {ray_start:.1f} s, "
        f"not counted below), {args.workers} actors × 1 thread, `map_batches(batch_size={args.batch})`, "
        "Redis the only cache tier (memory and disk off), a fresh namespace",
        "",
        "| run | wall s | images/s | vs CLI | labels equal to the CLI's | sources |",
        "|---|---:|---:|---:|---:|---|",
        f"| `singlepoint classify` (release, 2 instances × 1 thread, no cache) | {cli_wall:.1f} | {n / cli_wall:.0f} | 1.00 | {len(want)}/{n} | computed |",
        f"| Python package, one process (`sp.Model(cache=False).compute(folder)`) | {package_wall:.1f} | {n / package_wall:.0f} | {cli_wall / package_wall:.2f} | {package_ok}/{n} | computed |",
    ]
    for name, wall, count, same, sources in runs:
        src = ", ".join(f"{k} {v}" for k, v in sorted(sources.items()))
        lines.append(f"| {name} | {wall:.1f} | {count / wall:.0f} | {cli_wall / wall:.2f} | {same}/{count} | {src} |")
    lines += ["", "`vs CLI` is the CLI's wall time over the run's (above 1: faster than the CLI)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
