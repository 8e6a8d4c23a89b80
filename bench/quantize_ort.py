"""The reference for `singlepoint quantize`: ONNX Runtime's own static quantiser
(onnxruntime.quantization.quantize_static: QDQ, per-channel int8 weights, uint8 activations)
on the bundled EfficientNet-Lite0 with the same calibration and held-out sets as
bench/quantize.py, each method, and the top-1 agreement of the result with fp32, measured the
same way as that script's independent check (onnxruntime-Python, Pillow's bilinear resize).
With `--ours DIR`, the agreement of a version `singlepoint quantize` wrote, on the same inputs.

Usage: python3 bench/quantize_ort.py [--ours DIR ...] [--out FILE]
Needs: onnxruntime, onnx, numpy, Pillow; ffmpeg
"""
import argparse, datetime, os, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import header
import quantize as q


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", nargs="*", default=[])
    ap.add_argument("--out", default=os.path.join(q.root, "bench", "results",
                                                  f"quantize-ort-{datetime.date.today()}.md"))
    args = ap.parse_args()
    import numpy as np
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    work = tempfile.mkdtemp(prefix="sp-quantize-ort-")
    cal, held = q.sets(work)
    check = q.Fp32Check(held, os.cpu_count())
    images = sorted(f for f in os.listdir(cal) if f.lower().endswith((".png", ".jpg", ".jpeg")))
    calibration = np.stack([check.prep(os.path.join(cal, f)) for f in images])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter({"input": x[None]} for x in calibration)

        def get_next(self):
            return next(self.items, None)

    report = header("int8 reference: onnxruntime.quantization.quantize_static", "quantize_ort.py")
    report.append(f"- sets: those of bench/quantize.py: {len(images)} calibration, {len(check.x)} held-out images\n")
    report.append("| quantiser | top-1 agreement with fp32 | on the margin ≥ 0.05 ones | seconds |")
    report.append("|---|---|---|---|")
    for name, method in [("MinMax", CalibrationMethod.MinMax), ("Percentile", CalibrationMethod.Percentile),
                         ("Entropy", CalibrationMethod.Entropy)]:
        out = os.path.join(work, f"ort-{name}.onnx")
        t0 = time.perf_counter()
        quantize_static(os.path.join(q.root, "models", "efficientnet-lite0", "model.onnx"), out, Reader(),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=method)
        every, sure = check.agreement(out)
        report.append(f"| ORT quantize_static, {name}, all layers | {every:.4f} | {sure:.4f} | {time.perf_counter() - t0:.0f} |")
    for d in args.ours:
        every, sure = check.agreement(os.path.join(d, "model.onnx"))
        report.append(f"| singlepoint quantize `{os.path.basename(d.rstrip('/'))}` | {every:.4f} | {sure:.4f} | — |")
    text = "\n".join(report) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
