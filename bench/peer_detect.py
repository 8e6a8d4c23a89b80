"""The hand-written Python detector `bench/detect.py` compares `singlepoint detect` with: what a
careful user writes for YOLOv3-tiny over a video. Frames come from an ffmpeg child as raw RGB24
over a pipe (as ours do); each is letterboxed with PIL exactly as the model's reference
(tests/data/detection/expected_detections.json: r = min(416/w, 416/h), round(w·r), bilinear,
centred on grey 128, /255, NCHW), run through onnxruntime (CPU EP, its default threads), and
post-processed with numpy: argmax class, score > 0.25, boxes back to frame pixels and clipped,
per-class greedy NMS at IoU 0.45. `--batch N` runs N frames per session call.

Prints one JSON line per frame ({"frame", "detections": [{"class", "score", "box"}]}) on stdout
and, last on stderr, a JSON line of core-ms per frame by stage (decode counts the ffmpeg child).

Usage: python3 bench/peer_detect.py MODEL.onnx VIDEO [--batch 1] [--threads 0]
"""
import argparse, json, os, resource, subprocess, sys, time

import numpy as np
import onnxruntime as ort
from PIL import Image

S, CONF, IOU = 416, 0.25, 0.45


def letterbox(frame):
    img = Image.fromarray(frame)
    w, h = img.size
    r = min(S / w, S / h)
    nw, nh = round(w * r), round(h * r)
    canvas = Image.new("RGB", (S, S), (128, 128, 128))
    dx, dy = (S - nw) // 2, (S - nh) // 2
    canvas.paste(img.resize((nw, nh), Image.BILINEAR), (dx, dy))
    x = np.asarray(canvas, np.float32).transpose(2, 0, 1) / np.float32(255.0)
    return x, r, dx, dy


def nms(b, s):
    order = np.argsort(-s, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        xx1 = np.maximum(b[i, 0], b[rest, 0]); yy1 = np.maximum(b[i, 1], b[rest, 1])
        xx2 = np.minimum(b[i, 2], b[rest, 2]); yy2 = np.minimum(b[i, 3], b[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        a = (b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1])
        ao = (b[rest, 2] - b[rest, 0]) * (b[rest, 3] - b[rest, 1])
        order = rest[inter / np.maximum(a + ao - inter, 1e-12) <= IOU]
    return keep


def postprocess(boxes, scores, r, dx, dy, W, H):
    cls = scores.argmax(1)
    sc = scores[np.arange(len(cls)), cls]
    m = sc > CONF
    b, sc, cls = boxes[m].astype(np.float64), sc[m], cls[m]
    xyxy = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2,
                     b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)
    xyxy = np.clip((xyxy - [dx, dy, dx, dy]) / r, 0, [W, H, W, H])
    out = []
    for c in np.unique(cls):
        idx = np.where(cls == c)[0]
        for k in nms(xyxy[idx], sc[idx]):
            j = idx[k]
            out.append({"class": int(c), "score": round(float(sc[j]), 5),
                        "box": [round(float(v), 2) for v in xyxy[j]]})
    out.sort(key=lambda d: -d["score"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("video")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    args = ap.parse_args()
    so = ort.SessionOptions()
    if args.threads:
        so.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                            "stream=width,height", "-of", "csv=p=0", args.video],
                           capture_output=True, text=True, check=True).stdout.strip().split(",")
    W, H = int(probe[0]), int(probe[1])
    child = subprocess.Popen(["ffmpeg", "-nostdin", "-v", "error", "-i", args.video, "-f", "rawvideo",
                              "-pix_fmt", "rgb24", "pipe:1"], stdout=subprocess.PIPE)
    t = {"decode": 0.0, "preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
    clock = time.thread_time
    n = 0
    pending = []

    def flush():
        nonlocal n
        t0 = clock()
        x = np.stack([p[0] for p in pending])
        boxes, scores = sess.run(["boxes", "scores"], {"images": x})
        t1 = clock()
        for k, (_, r, dx, dy) in enumerate(pending):
            found = postprocess(boxes[k], scores[k], r, dx, dy, W, H)
            sys.stdout.write(json.dumps({"frame": n, "detections": found}) + "\n")
            n += 1
        t["inference"] += t1 - t0
        t["postprocess"] += clock() - t1
        pending.clear()

    size = W * H * 3
    while True:
        t0 = clock()
        raw = child.stdout.read(size)
        if len(raw) < size:
            break
        frame = np.frombuffer(raw, np.uint8).reshape(H, W, 3)
        t1 = clock()
        pending.append(letterbox(frame))
        t["decode"] += t1 - t0
        t["preprocess"] += clock() - t1
        if len(pending) == args.batch:
            flush()
    if pending:
        flush()
    child.wait()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    t["decode"] += kids.ru_utime + kids.ru_stime
    # Inference ran on onnxruntime's own threads too: charge the process's CPU outside the
    # stages measured on this thread to inference.
    me = resource.getrusage(resource.RUSAGE_SELF)
    t["inference"] += max(0.0, me.ru_utime + me.ru_stime - time.thread_time())
    print(json.dumps({f"{k}_core_ms": 1e3 * v / max(n, 1) for k, v in t.items()} | {"frames": n}),
          file=sys.stderr)


if __name__ == "__main__":
    main()
