"""`singlepoint adapt` measured: a sentiment head on the bundled all-MiniLM-L6-v2, trained on
the Amazon and Yelp UCI sentences and tested on the IMDB ones, against scikit-learn's
LogisticRegressionCV on the same embeddings (from `singlepoint embed`); the adapted model served
by `singlepoint serve` and asked over HTTP; and few-shot scene classes cut from the frames of
tests/data/video/bikes.mp4 by shot.

    python3 bench/adapt.py --bin target/release/singlepoint --out bench/results/adapt-2026-12-02.md
"""
import argparse, io, json, os, re, shutil, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import free_port, header  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOTS = [0, 30, 76, 137, 187, 242, 250]


def sentences(sources):
    rows = []
    with open(os.path.join(ROOT, "tests/data/text/uci_sentiment.tsv")) as f:
        next(f)
        for line in f:
            source, label, text = line.rstrip("\n").split("\t", 2)
            if source in sources:
                rows.append(("positive" if label == "1" else "negative", text))
    return rows


def run(cmd, env):
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return out.stdout, time.perf_counter() - t


def embed(bin, texts, path, env):
    import numpy as np
    with open(path + ".txt", "w") as f:
        f.write("".join(t + "\n" for t in texts))
    run([bin, "embed", path + ".txt", "--format", "npy", "-o", path + ".npy", "-q"], env)
    return np.load(path + ".npy")


def held_out(stdout):
    return float(re.search(r"held-out accuracy ([0-9.]+)", stdout).group(1))


def kfold(stdout):
    m = re.search(r"(\d+)-fold accuracy ([0-9.]+)", stdout)
    return int(m.group(1)), float(m.group(2))


def text_section(bin, work, env):
    import numpy as np
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = sentences({"amazon", "yelp"}), sentences({"imdb"})
    x = embed(bin, [t for _, t in train], os.path.join(work, "train"), env)
    xt = embed(bin, [t for _, t in test], os.path.join(work, "imdb"), env)
    y = np.array([l for l, _ in train])
    yt = np.array([l for l, _ in test])
    sk = {}
    for name, model in [
        ("LogisticRegressionCV (defaults: Cs=10, 5-fold, lbfgs), raw embeddings",
         LogisticRegressionCV(max_iter=1000)),
        ("StandardScaler + LogisticRegressionCV (what adapt fits)",
         make_pipeline(StandardScaler(), LogisticRegressionCV(max_iter=1000))),
    ]:
        t = time.perf_counter()
        model.fit(x, y)
        sk[name] = ((model.predict(xt) == yt).mean(), time.perf_counter() - t)
    for path, rows in [("train.tsv", train), ("imdb.tsv", test)]:
        with open(os.path.join(work, path), "w") as f:
            f.write("".join(f"{l}\t{t}\n" for l, t in rows))
    out_dir = os.path.join(work, "sentiment")
    stdout, wall = run([bin, "adapt", "--examples", os.path.join(work, "train.tsv"),
                        "--holdout", os.path.join(work, "imdb.tsv"), "--out", out_dir], env)
    ours = held_out(stdout)

    # Served: the adapted model behind `serve`, the IMDB sentences posted 50 a request.
    port = free_port()
    server = subprocess.Popen([bin, "serve", "--model", out_dir, "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/v2/health/ready", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        labels = []
        for i in range(0, len(test), 50):
            body = json.dumps({"inputs": [t for _, t in test[i:i + 50]]}).encode()
            req = urllib.request.Request(url + "/v1/models/sentiment/classify", body,
                                         {"Content-Type": "application/json"})
            labels += [r["label"] for r in json.load(urllib.request.urlopen(req))["results"]]
    finally:
        server.terminate()
        server.wait()
    served = (np.array(labels) == yt).mean()
    lines = [
        "## Text: sentiment from all-MiniLM-L6-v2 (int8) embeddings",
        "",
        f"Trained on the {len(train)} Amazon and Yelp sentences, tested on the {len(test)} IMDB ones",
        "(tests/data/text/uci_sentiment.tsv). scikit-learn runs on the embeddings `singlepoint embed`",
        "wrote (mean-pooled, L2-normalised); `adapt` reads the same ones from its cache.",
        "",
        "| classifier | IMDB accuracy | fit seconds |",
        "|---|---:|---:|",
    ]
    for name, (acc, secs) in sk.items():
        lines.append(f"| scikit-learn {sklearn_version()} {name} | {acc:.4f} | {secs:.1f} |")
    k, cv = kfold(stdout)
    lines += [
        f"| `singlepoint adapt` ({k}-fold accuracy {cv:.4f} on the training sentences) | {ours:.4f} | {wall:.1f} (the whole command) |",
        f"| the adapted model served: `serve --model`, POST /v1/models/sentiment/classify | {served:.4f} | — |",
        "",
        "```text",
        stdout.rstrip(),
        "```",
    ]
    return lines


def sklearn_version():
    import sklearn
    return sklearn.__version__


def scene_frames(work):
    frames = os.path.join(work, "frames")
    os.makedirs(frames, exist_ok=True)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i",
                    os.path.join(ROOT, "tests/data/video/bikes.mp4"), "-vsync", "0",
                    os.path.join(frames, "f%03d.png")], check=True)
    return frames


def split(frames, dest, keep):
    for i in range(250):
        shot = next(k for k in range(6) if SHOTS[k] <= i < SHOTS[k + 1]) + 1
        if keep(i, shot):
            d = os.path.join(dest, f"shot-{shot}")
            os.makedirs(d, exist_ok=True)
            shutil.copy(os.path.join(frames, f"f{i + 1:03d}.png"), os.path.join(d, f"f{i:03d}.png"))


def scenes_section(bin, work, env):
    frames = scene_frames(work)
    lines = [
        "## Images: the six shots of bikes.mp4 as classes (EfficientNet-Lite0 features)",
        "",
        "Frames decoded by ffmpeg; shot boundaries 0, 30, 76, 137, 187, 242 (tests/data/video/README.md).",
        "",
        "| training frames | held-out frames | k-fold accuracy | held-out accuracy |",
        "|---|---|---:|---:|",
    ]
    cases = [
        ("the first two of each shot (12)", lambda i, s: i in (SHOTS[s - 1], SHOTS[s - 1] + 4),
         "every other frame (i % 4 == 2)", lambda i, s: i % 4 == 2),
        ("every 4th (i % 4 == 0, 63)", lambda i, s: i % 4 == 0,
         "every other frame (i % 4 == 2)", lambda i, s: i % 4 == 2),
    ]
    outputs = []
    for n, (train_name, train, test_name, test) in enumerate(cases):
        t, h = os.path.join(work, f"scenes{n}"), os.path.join(work, f"hold{n}")
        split(frames, t, train)
        split(frames, h, test)
        stdout, _ = run([bin, "adapt", "--examples", t, "--holdout", h,
                         "--out", os.path.join(work, f"scenes-model{n}")], env)
        k, cv = kfold(stdout)
        lines.append(f"| {train_name} | {test_name} | {cv:.4f} ({k}-fold) | {held_out(stdout):.4f} |")
        outputs.append(stdout.rstrip())
    lines += ["", "```text", outputs[0], "```"]
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/singlepoint"))
    ap.add_argument("--out")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="adapt-bench-")
    env = dict(os.environ, SINGLEPOINT_CACHE_DIR=os.path.join(work, "cache"))
    lines = header("`singlepoint adapt`: heads for your own classes", "adapt.py")
    lines.append("")
    lines += text_section(args.bin, work, env)
    lines.append("")
    lines += scenes_section(args.bin, work, env)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
