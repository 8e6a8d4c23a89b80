"""The bundled model's answers under both centre-crop offset conventions (floor vs half_even),
on the bundled photos resized to 741x500, where the offset (379 - 224) / 2 = 77.5 is not whole.

Copies models/efficientnet-lite0 twice with `preprocess.crop.rounding` set to each convention,
runs `singlepoint classify --no-cache --format jsonl --top-k 1` on both, and writes the top-1
class and probability per photo to bench/results/.

Usage: python3 bench/crop_rounding.py [--bin target/release/singlepoint]
Needs Pillow (for the resized copies).
"""
from common import header
import argparse, datetime, json, os, shutil, subprocess, sys, tempfile

root = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(root)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(repo, "target", "release", "singlepoint"))
    args = ap.parse_args()
    from PIL import Image
    work = tempfile.mkdtemp()
    photos = sorted(f for f in os.listdir(os.path.join(repo, "photos")) if f.endswith((".png", ".jpg")))
    paths = []
    for f in photos:
        out = os.path.join(work, os.path.splitext(f)[0] + "-741x500.png")
        Image.open(os.path.join(repo, "photos", f)).convert("RGB").resize((741, 500), Image.BICUBIC).save(out)
        paths.append(out)
    answers = {}
    for rounding in ["floor", "half_even"]:
        model = os.path.join(work, f"model-{rounding}")
        shutil.copytree(os.path.join(repo, "models", "efficientnet-lite0"), model)
        manifest = json.load(open(os.path.join(model, "model.json")))
        manifest["preprocess"]["crop"]["rounding"] = rounding
        json.dump(manifest, open(os.path.join(model, "model.json"), "w"))
        out = subprocess.run([args.bin, "classify", "--model", model, "--no-cache", "--format", "jsonl",
                              "--top-k", "1", *paths], capture_output=True, text=True, check=True).stdout
        answers[rounding] = [json.loads(l)["top_k"][0] for l in out.splitlines()]
    report = header("Centre-crop offset rounding: floor vs half_even (bundled model, photos at 741x500)",
                    "crop_rounding.py")
    report.append("\n| photo | floor: top-1 | half_even: top-1 |\n|---|---|---|")
    for f, a, b in zip(photos, answers["floor"], answers["half_even"]):
        report.append(f"| {f} | {a['label']} {a['probability']:.3f} | {b['label']} {b['probability']:.3f} |")
    shutil.rmtree(work)
    name = f"crop-rounding-{datetime.date.today():%Y-%m-%d}.md"
    with open(os.path.join(root, "results", name), "w") as fh:
        fh.write("\n".join(report) + "\n")
    print("\n".join(report))

if __name__ == "__main__":
    main()
