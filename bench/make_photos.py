"""Builds the benchmark photo sets under bench/data/ (not committed) from the bundled photos.

- web/: 1000 distinct web-size JPEGs, 1024 to 1600 px on the long side (the sizes photo sites
  and social networks serve; Pillow spends about 10 ms decoding and resizing each): each is a
  bundled photo with its own random crop, size, mirror and JPEG quality, so no two files are
  alike and no cache or page-cache trick can make one stand for another.
- small/: 1000 the same way at 560 to 720 px, the size of the bundled photos themselves.
- camera/: 200 camera-size JPEGs (12 megapixels, 4000 x 3000 or 3000 x 4000), each an
  upscaled, perturbed re-encoding with its own quality.

Usage: python3 bench/make_photos.py [--web N] [--small N] [--camera N]   (needs Pillow)
"""
import argparse, os, random
from PIL import Image, ImageFilter

root = os.path.dirname(os.path.abspath(__file__))
photos = os.path.join(root, "..", "photos")

def variants(rng, sources, n, make):
    for i in range(n):
        src = sources[i % len(sources)]
        yield i, make(rng, src)

def web(rng, img, lo=1024, hi=1600):
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.75, 1.0)), int(h * rng.uniform(0.75, 1.0))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = img.crop((x, y, x + cw, y + ch))
    long_side = rng.randint(lo, hi)
    scale = long_side / max(out.size)
    out = out.resize((max(1, round(out.size[0] * scale)), max(1, round(out.size[1] * scale))), Image.BICUBIC)
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return out

def camera(rng, img):
    w, h = img.size
    size = (4000, 3000) if w >= h else (3000, 4000)
    out = img.resize(size, Image.BICUBIC)
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    # Some real-image texture so the JPEG does not collapse to smooth gradients.
    return out.filter(ImageFilter.UnsharpMask(radius=2, percent=rng.randint(80, 160)))

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--web", type=int, default=1000)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--camera", type=int, default=200)
    args = ap.parse_args()
    rng = random.Random(20261129)
    sources = [Image.open(os.path.join(photos, f)).convert("RGB")
               for f in sorted(os.listdir(photos)) if f.endswith((".png", ".jpg"))]
    small = lambda rng, img: web(rng, img, 560, 720)
    for name, n, make in [("web", args.web, web), ("small", args.small, small), ("camera", args.camera, camera)]:
        out_dir = os.path.join(root, "data", name)
        os.makedirs(out_dir, exist_ok=True)
        for i, img in variants(rng, sources, n, make):
            img.save(os.path.join(out_dir, f"{name}-{i:05d}.jpg"), quality=rng.randint(75, 95))
        print(f"{n} {name} photos in {out_dir}")

if __name__ == "__main__":
    main()
