"""int8 with the accuracy guard: `singlepoint quantize` on the bundled EfficientNet-Lite0 and
YOLOv3-tiny with real images, the calibration and held-out sets disjoint.

Sets: frames of the two bundled videos (tests/data/video), decoded by ffmpeg into PNG, and the
bundled photos:
- calibration: photos/ (7), bikes.mp4 frames n % 5 == 0 (50), vtest.avi frames 0-299 with
  n % 6 == 0 (50): 107 images;
- held-out: vtest.avi frames 300-794 (495) and bikes.mp4 frames n % 5 == 2 (50): 545 images,
  none of them calibrated on (vtest's held-out frames are 30 s and more of footage later).

For each model and agreement floor it runs `singlepoint quantize MODEL --calibration ...
--holdout ... --min-agreement FLOOR --out DIR` and records its report: agreement with fp32 by the
task's own measure (top-1 for the classifier, matched detections for the detector), the
calibration method chosen, the layers kept in float, the size, and the throughput of the fp32
and int8 graphs, which quantize measures itself in one run (alternating, best of three, same
batch and threads). A floor no version reaches is reported with quantize's refusal.

Usage: python3 bench/quantize.py [--classifier-floors 0.5 0.9 0.95 0.99] [--detector-floors 0.5 0.95]
       [--threads 2] [--keep DIR] [--out FILE]
Needs: cargo build --release; ffmpeg
"""
import argparse, datetime, json, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import header

root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
binary = os.path.join(root, "target", "release", "singlepoint")
video = os.path.join(root, "tests", "data", "video")


def frames(src, select, out_dir, prefix):
    os.makedirs(out_dir, exist_ok=True)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", os.path.join(video, src),
                    "-vf", f"select='{select}'", "-fps_mode", "passthrough",
                    os.path.join(out_dir, f"{prefix}_%04d.png")], check=True)


def sets(work):
    cal, held = os.path.join(work, "calibration"), os.path.join(work, "holdout")
    frames("bikes.mp4", "not(mod(n\\,5))", cal, "bikes")
    frames("vtest.avi", "lt(n\\,300)*not(mod(n\\,6))", cal, "vtest")
    for p in sorted(os.listdir(os.path.join(root, "photos"))):
        shutil.copy(os.path.join(root, "photos", p), cal)
    frames("bikes.mp4", "eq(mod(n\\,5)\\,2)", held, "bikes")
    frames("vtest.avi", "gte(n\\,300)", held, "vtest")
    return cal, held


def quantize(model, cal, held, floor, out, threads, batch):
    cmd = [binary, "quantize", *([model] if model else []), "--calibration", cal, "--holdout", held,
           "--min-agreement", str(floor), "--threads", str(threads), "--batch", str(batch),
           "--out", out, "--no-fetch"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    wall = time.perf_counter() - t0
    shown = " ".join(os.path.relpath(c, root) if os.path.isabs(c) else c for c in cmd)
    print(f"{shown}: {wall:.0f} s, rc {p.returncode}", file=sys.stderr)
    if p.returncode != 0:
        return {"cmd": shown, "wall": wall, "error": p.stderr.strip().splitlines()[-1]}
    with open(os.path.join(out, "quantize.json")) as f:
        return {"cmd": shown, "wall": wall, "report": json.load(f), "stdout": p.stdout.strip()}


class Fp32Check:
    """An independent look at the classifier's versions (onnxruntime-Python, Pillow's bilinear
    resize: the recipe in model.json) on the held-out set: how unsure fp32 itself is there,
    which bounds any int8 version's top-1 agreement, and each written version's agreement on
    all inputs and on those whose top-1 margin in fp32 is 0.05 or more. Unavailable without onnxruntime and numpy."""

    def __init__(self, held, threads):
        import numpy as np, onnxruntime as ort
        from PIL import Image
        self.np, self.ort, self.threads, self.sessions = np, ort, threads, {}

        def prep(path):
            im = Image.open(path).convert("RGB")
            w, h = im.size
            s = 256 / min(w, h)
            im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
            w, h = im.size
            l, t = (w - 224) // 2, (h - 224) // 2
            a = np.asarray(im.crop((l, t, l + 224, t + 224)), dtype=np.float32)
            return ((a - 127) / 128).transpose(2, 0, 1)

        self.prep = prep
        self.x = np.stack([prep(os.path.join(held, f)) for f in sorted(os.listdir(held))])
        base = self.run(os.path.join(root, "models", "efficientnet-lite0", "model.onnx"), self.x)
        self.top = base.argmax(1)
        p = np.exp(base - base.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        ps = np.sort(p, 1)
        self.top1, self.margin = ps[:, -1], ps[:, -1] - ps[:, -2]
        self.sure = self.margin >= 0.05

    def run(self, onnx, x):
        if onnx not in self.sessions:
            so = self.ort.SessionOptions()
            so.intra_op_num_threads = self.threads
            self.sessions[onnx] = self.ort.InferenceSession(onnx, so)
        sess = self.sessions[onnx]
        name = sess.get_inputs()[0].name
        return self.np.concatenate([sess.run(None, {name: x[i:i + 16]})[0] for i in range(0, len(x), 16)])

    def noise(self, seeds=3):
        """Share of fp32 top-1 answers kept under uniform input noise of half a grey level."""
        np = self.np
        kept = []
        for seed in range(seeds):
            noisy = self.x + np.random.default_rng(seed).uniform(-0.5 / 128, 0.5 / 128, self.x.shape)
            kept.append(float((self.run(os.path.join(root, "models", "efficientnet-lite0", "model.onnx"),
                                        noisy.astype(np.float32)).argmax(1) == self.top).mean()))
        return kept

    def agreement(self, onnx):
        same = self.run(onnx, self.x).argmax(1) == self.top
        return float(same.mean()), float(same[self.sure].mean()) if self.sure.any() else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--classifier-floors", type=float, nargs="*", default=[0.5, 0.9, 0.95, 0.99])
    ap.add_argument("--detector-floors", type=float, nargs="*", default=[0.5, 0.95])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--keep", help="keep the int8 versions under this folder")
    ap.add_argument("--out", default=os.path.join(root, "bench", "results",
                                                  f"quantize-{datetime.date.today()}.md"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="sp-quantize-")
    keep = args.keep or work
    cal, held = sets(work)
    n_cal = sum(f.lower().endswith((".png", ".jpg", ".jpeg")) for f in os.listdir(cal))
    n_held = len(os.listdir(held))
    report = header("int8: `singlepoint quantize` with the accuracy guard", "quantize.py")
    report.append(f"- sets: {n_cal} calibration images (photos/, bikes.mp4 every 5th frame, vtest.avi "
                  f"frames 0-299 every 6th), {n_held} held-out images (vtest.avi frames 300-794, bikes.mp4 "
                  f"frames n % 5 == 2), decoded by ffmpeg; disjoint")
    report.append(f"- throughput: measured by quantize itself, fp32 and int8 graphs alternating, best of 3, "
                  f"{args.threads} intra-op threads, one session\n")
    models = [("EfficientNet-Lite0 (top-1 agreement)", None, args.classifier_floors, 16, "efficientnet"),
              ("YOLOv3-tiny (matched detections, same class, IoU >= 0.5)",
               os.path.join(root, "models", "yolov3-tiny"), args.detector_floors, 8, "yolov3-tiny")]
    for title, model, floors, batch, short in models:
        report.append(f"## {title}\n")
        report.append("| floor | agreement | method | layers int8 / float | size MB fp32 → int8 | "
                      "fp32 /s | int8 /s | int8 ÷ fp32 | quantize wall s |")
        report.append("|---|---|---|---|---|---|---|---|---|")
        notes = []
        check = None
        if short == "efficientnet":
            try:
                check = Fp32Check(held, args.threads)
            except ImportError:
                notes.append("- (onnxruntime-Python not installed: no independent check)")
        for floor in floors:
            out = os.path.join(keep, f"{short}-int8-{floor}")
            r = quantize(model, cal, held, floor, out, args.threads, batch)
            if "error" in r:
                report.append(f"| {floor} | — | — | — | — | — | — | — | {r['wall']:.0f} |")
                notes.append(f"- floor {floor}: refused: {r['error']}")
                continue
            q = r["report"]
            t = q["throughput"]
            report.append(
                f"| {floor} | {q['agreement']:.4f} | {q['method']} | {q['quantized_layers']} / {len(q['float_layers'])} | "
                f"{q['float_bytes'] / 1e6:.1f} → {q['int8_bytes'] / 1e6:.1f} | {t['float_per_s']:.1f} | "
                f"{t['int8_per_s']:.1f} | **{t['ratio']:.2f}×** | {r['wall']:.0f} |")
            methods = ", ".join(f"{m['method']} {m['agreement']:.4f}" for m in q["methods"])
            notes.append(f"- floor {floor}: all-int8 agreement by method: {methods}"
                         + (f"; kept in float: {', '.join(q['float_layers'])}" if q["float_layers"] else ""))
            notes.append("  ```\n" + "\n".join("  " + l for l in r["stdout"].splitlines()) + "\n  ```")
            if check:
                every, sure = check.agreement(os.path.join(out, "model.onnx"))
                notes.append(f"  - onnxruntime-Python on the same held-out images: top-1 agreement {every:.4f}; "
                             f"{sure:.4f} on the {int(check.sure.sum())} whose fp32 top-1 margin is 0.05 or more")
        report.append("")
        report.extend(notes)
        if check:
            kept = check.noise()
            np = check.np
            report.append(
                f"- how unsure fp32 itself is on these {n_held} held-out images (onnxruntime-Python, "
                f"Pillow bilinear): median top-1 probability {float(np.median(check.top1)):.3f}, "
                f"median margin to the second class {float(np.median(check.margin)):.3f}, "
                f"{float((check.margin < 0.05).mean()) * 100:.1f} % with a margin under 0.05, "
                f"{int((check.top1 >= 0.5).sum())} with a top-1 probability of 0.5 or more; uniform noise of half "
                f"a grey level on the input keeps " + ", ".join(f"{k:.4f}" for k in kept)
                + " of the fp32 top-1 answers (3 seeds)")
        report.append(f"\nCommand (per floor): `{r['cmd']}`\n")
    text = "\n".join(report) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
