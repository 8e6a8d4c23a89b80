"""How much consecutive frames of a video differ, in the difference detector's terms: the mean
absolute difference of 64 x 64 grids of mean BT.601 luma (crates/runtime/src/reuse.rs computes
the same grid in integers). The figures behind `CUT_MAD` and `DEFAULT_THRESHOLD` in reuse.rs.

Prints, per video, the 50th/90th/99th percentile and maximum of the consecutive-frame
differences and the eight frames that differ most from the frame before.

Usage: python3 bench/frame_differences.py tests/data/video/bikes.mp4 tests/data/video/vtest.avi
Needs: ffmpeg, numpy
"""
import subprocess
import sys

import numpy as np

S = 64


def frames(path):
    size = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                           "stream=width,height", "-of", "csv=p=0", path],
                          capture_output=True, text=True, check=True).stdout.strip().split(",")
    w, h = int(size[0]), int(size[1])
    p = subprocess.Popen(["ffmpeg", "-v", "error", "-i", path, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         stdout=subprocess.PIPE)
    while True:
        b = p.stdout.read(w * h * 3)
        if len(b) < w * h * 3:
            break
        yield np.frombuffer(b, np.uint8).reshape(h, w, 3)


def thumb(frame):
    luma = frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    h, w = luma.shape
    ys, xs = (np.arange(S + 1) * h) // S, (np.arange(S + 1) * w) // S
    return np.array([[luma[ys[i]:ys[i + 1], xs[j]:xs[j + 1]].mean() for j in range(S)] for i in range(S)])


for path in sys.argv[1:]:
    th = [thumb(f) for f in frames(path)]
    d = np.array([np.abs(th[i] - th[i - 1]).mean() for i in range(1, len(th))])
    top = np.argsort(-d)[:8] + 1
    print(f"{path}: {len(th)} frames; consecutive differences p50/p90/p99 "
          f"{np.percentile(d, [50, 90, 99]).round(2).tolist()}, max {d.max():.2f}; "
          f"largest at frames {sorted(top.tolist())}: {[round(float(v), 1) for v in d[np.sort(top) - 1]]}")
