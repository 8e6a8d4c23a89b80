"""Writes the hostile-input corpus under tests/hostile/ and the fuzzers' seed corpora under
fuzz/corpus/: images that lie about themselves, inference requests that lie about their
tensors, and model folders whose manifests point outside themselves. Every case and what must
happen to it is listed in tests/hostile/cases.json, which crates/cli/tests/it/hostile.rs reads.

The output is deterministic: run it again and git shows no change (Pillow's encoders aside).

Usage: python3 tests/hostile/generate.py        (needs Pillow; scripts/test installs it)
"""

import io
import json
import shutil
import struct
import sys
import zlib
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "hostile"
FUZZ = ROOT / "fuzz" / "corpus"
MODEL = "efficientnet-lite0"
INFER = f"/v2/models/{MODEL}/infer"
CLASSIFY = f"/v1/models/{MODEL}/classify"

cases = []


def write(rel, data):
    path = OUT / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return rel


def case(**fields):
    cases.append(fields)


# ---------------------------------------------------------------- images

def base_photo():
    """A small real photo, so that the valid oddities below classify as something real."""
    with Image.open(ROOT / "photos" / "chelsea.png") as im:
        return im.convert("RGB").resize((96, 64), Image.BILINEAR)


def encode(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png(width, height, depth, color, raw, declared=None):
    """A PNG built by hand, so that its header can say anything."""
    w, h = declared or (width, height)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b""))


def png16(im, gray):
    """A 16-bit PNG of `im` (each byte v becomes v·257, so the 8-bit view is unchanged)."""
    im = im.convert("L" if gray else "RGB")
    channels = 1 if gray else 3
    rows = []
    data = im.tobytes()
    stride = im.width * channels
    for y in range(im.height):
        row = data[y * stride:(y + 1) * stride]
        rows.append(b"\x00" + b"".join(struct.pack(">H", v * 257) for v in row))
    return png(im.width, im.height, 16, 0 if gray else 2, b"".join(rows))


def jpeg_with_size(jpeg, width, height):
    """The same JPEG with its frame header (SOF0/SOF2) claiming another size."""
    data = bytearray(jpeg)
    i = 2
    while i < len(data):
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise ValueError("no frame header")


def gif_bomb():
    """A GIF whose screen and only frame claim 65535×65535, with a few bytes of pixels."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0)
    return screen + frame + b"\x02\x02\x44\x01\x00" + b"\x3b"


def webp_bomb():
    """An extended WebP whose canvas (VP8X) and lossless image (VP8L) claim 16384×16384."""
    side = 16384
    vp8x = struct.pack("<I", 0) + struct.pack("<I", side - 1)[:3] + struct.pack("<I", side - 1)[:3]
    bits = (side - 1) | ((side - 1) << 14)
    vp8l = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 15
    chunks = (b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
              + b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l)
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def tiff_bomb():
    """A baseline TIFF whose one strip claims 100000×100000 gray pixels."""
    entries = [
        (256, 4, 1, 100000),    # ImageWidth
        (257, 4, 1, 100000),    # ImageLength
        (258, 3, 1, 8),         # BitsPerSample
        (259, 3, 1, 1),         # Compression: none
        (262, 3, 1, 1),         # Photometric: black is zero
        (273, 4, 1, 8 + 2 + 9 * 12 + 4),  # StripOffsets: right after the IFD
        (277, 3, 1, 1),         # SamplesPerPixel
        (278, 4, 1, 100000),    # RowsPerStrip
        (279, 4, 1, 16),        # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00" + b"\x00" * 16


def images():
    photo = base_photo()
    jpeg = encode(photo, "JPEG", quality=90)
    png8 = encode(photo, "PNG")
    write("images/base.png", png8)
    case(name="a valid PNG (the control)", kind="image", file="images/base.png", expect="ok")

    bad = [
        ("zero-byte.jpg", b"", "empty"),
        ("truncated.jpg", jpeg[: len(jpeg) // 2], "truncated"),
        ("truncated.png", png8[: len(png8) * 2 // 3], "corrupt or truncated PNG"),
        ("header-only.png", png8[:33], "corrupt or truncated PNG"),
        ("wrong-magic.jpg", b"\x00\x00" + jpeg[2:], "not an image"),
        ("text.png", b"this is a text file, not a picture\n", "not an image"),
        ("pdf.jpg", b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n", "not an image"),
        ("zero-width.png", png(0, 8, 8, 2, b"", declared=(0, 8)), "corrupt or truncated PNG"),
        ("bomb-header.png", png(1, 1, 8, 2, b"\x00\x00\x00\x00", declared=(100000, 100000)),
         "decompression bomb"),
        ("bomb-real.png", png(12000, 12000, 1, 0, b"\x00" * ((12000 // 8 + 1) * 12000)),
         "decompression bomb"),
        ("bomb.jpg", jpeg_with_size(jpeg, 60000, 60000), "decompression bomb"),
        ("bomb.gif", gif_bomb(), "decompression bomb"),
        ("bomb.webp", webp_bomb(), "decompression bomb"),
        ("bomb.tiff", tiff_bomb(), "decompression bomb"),
        ("truncated.bmp", encode(photo, "BMP")[:200], "corrupt or truncated BMP"),
        ("truncated.gif", encode(photo, "GIF")[:100], "corrupt or truncated GIF"),
        ("truncated.webp", encode(photo, "WEBP", quality=80)[:60], "corrupt or truncated WebP"),
    ]
    for name, data, error in bad:
        case(name=f"image {name}", kind="image", file=write(f"images/{name}", data),
             expect="error", error=error)

    frames = [photo, photo.transpose(Image.FLIP_LEFT_RIGHT), photo.rotate(180)]
    odd = [
        ("cmyk.jpg", encode(photo.convert("CMYK"), "JPEG", quality=90)),
        ("rgb16.png", png16(photo, gray=False)),
        ("gray16.png", png16(photo, gray=True)),
        ("gray16.tiff", encode(photo.convert("L").convert("I;16"), "TIFF")),
        ("rgba.png", encode(photo.convert("RGBA"), "PNG")),
        ("palette.png", encode(photo.convert("P"), "PNG")),
        ("animated.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                                duration=100, loop=0)),
        ("progressive.jpg", encode(photo, "JPEG", quality=90, progressive=True)),
        ("tiny-1x1.png", encode(photo.resize((1, 1)), "PNG")),
        ("thin-4000x1.png", encode(photo.resize((4000, 1)), "PNG")),
    ]
    for name, data in odd:
        entry = dict(name=f"image {name}", kind="image", file=write(f"images/{name}", data),
                     expect="ok")
        if name == "rgb16.png":
            entry["same_as"] = "images/base.png"  # exactly the control's pixels, as v·257
        cases.append(entry)


# ---------------------------------------------------------------- inference requests

def request(inputs, **extra):
    return json.dumps({"inputs": inputs, **extra}).encode()


def fp32_input(shape, data, name="input", datatype="FP32"):
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def infer_case(name, body, status, error, header_len=None, path=INFER):
    file = write(f"requests/{name}", body)
    entry = dict(name=f"request {name}", kind="http", method="POST", path=path, file=file,
                 status=status, error=error)
    if header_len is not None:
        entry["header_len"] = header_len
    cases.append(entry)


def binary(header, payload):
    head = json.dumps(header).encode()
    return head + payload, len(head)


def requests():
    row = [0] * (3 * 224 * 224)
    infer_case("deep-array.json",
               b'{"inputs":[{"name":"input","shape":[1],"datatype":"FP32","data":'
               + b"[" * 100000 + b"]" * 100000 + b"}]}", 400, "recursion limit")
    infer_case("deep-object.json", b'{"a":' * 100000 + b"1" + b"}" * 100000, 400,
               "missing field `inputs`")
    infer_case("huge.json", request([fp32_input([1, 3, 224, 224], [0] * 600000)]), 413,
               "limit")
    infer_case("wide-array.json", request([fp32_input([1, 3, 224, 224], [0] * 300000)]), 400,
               "more than the 150528 elements")
    infer_case("wrong-shape.json", request([fp32_input([1, 3, 10, 10], [0] * 300)]), 400,
               "does not fit")
    infer_case("wrong-rank.json", request([fp32_input([150528], [0] * 10)]), 400, "does not fit")
    infer_case("wrong-datatype.json", request([fp32_input([1, 3, 224, 224], [0], datatype="INT8")]),
               400, "datatype `INT8` is not accepted")
    infer_case("wrong-input-name.json", request([fp32_input([1, 3, 224, 224], row, name="x")]),
               400, "unknown input `x`")
    infer_case("two-inputs.json", request([fp32_input([1], [0]), fp32_input([1], [0])]), 400,
               "exactly one input")
    infer_case("negative-dim.json", request([fp32_input([-1, 3, 224, 224], [0])]), 400,
               "negative dimension")
    infer_case("shape-overflow.json",
               request([fp32_input([2**62, 2**62, 224, 224], [0])]), 400, "too large")
    infer_case("shape-lies-big.json",
               request([fp32_input([1000000000, 3, 224, 224], [0, 1, 2])]), 400,
               "needs 150528000000000 elements")
    infer_case("empty-batch.json", request([fp32_input([0, 3, 224, 224], [])]), 400,
               "the batch is empty")
    infer_case("float-overflow.json", request([fp32_input([1, 3, 224, 224], [1e39] + row[1:])]),
               400, "NaN and infinities are refused")
    infer_case("nan-literal.json",
               request([fp32_input([1, 3, 224, 224], [0])]).replace(b"[0]", b"[NaN]"), 400,
               "malformed inference request")
    infer_case("string-data.json", request([fp32_input([1, 3, 224, 224], ["0"] * 3)]), 400,
               "only numbers")
    infer_case("no-data.json", request([{"name": "input", "shape": [1], "datatype": "FP32"}]),
               400, "neither `data` nor binary_data_size")
    infer_case("not-json.json", b"\x00\x01\x02garbage\xff", 400, "malformed inference request")
    infer_case("empty.json", b"", 400, "malformed inference request")
    infer_case("top-level-array.json", b"[1,2,3]", 400, "malformed inference request")
    infer_case("classification-zero.json",
               request([fp32_input([1, 3, 224, 224], row)],
                       outputs=[{"name": "logits", "parameters": {"classification": 0}}]),
               400, "classification must be an integer from 1 to 1000")
    infer_case("unknown-output.json",
               request([fp32_input([1, 3, 224, 224], row)], outputs=[{"name": "probs"}]),
               400, "unknown output `probs`")

    nan = struct.pack("<f", float("nan")) + b"\x00" * (4 * 150527)
    bin_input = {"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                 "parameters": {"binary_data_size": 4 * 150528}}
    body, n = binary({"inputs": [bin_input]}, nan)
    infer_case("binary-nan.bin", body, 400, "NaN and infinities are refused", header_len=n)
    body, n = binary({"inputs": [bin_input]}, b"\x00" * 1000)
    infer_case("binary-size-lies.bin", body, 400, "only 1000 remain", header_len=n)
    body, n = binary({"inputs": [bin_input]}, b"\x00" * (4 * 150528 + 7))
    infer_case("binary-extra-bytes.bin", body, 400, "7 bytes beyond", header_len=n)
    body, n = binary({"inputs": [bin_input]}, b"")
    infer_case("binary-header-past-body.bin", body, 400, "Inference-Header-Content-Length is",
               header_len=n + 50)
    small = {"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
             "parameters": {"binary_data_size": 12}}
    body, n = binary({"inputs": [small]}, b"\x00" * 12)
    infer_case("binary-shape-lies.bin", body, 400, "needs 602112", header_len=n)
    images_input = {"name": "input", "shape": [2], "datatype": "BYTES",
                    "parameters": {"binary_data_size": 8}}
    body, n = binary({"inputs": [images_input]}, struct.pack("<I", 1_000_000_000) + b"abcd")
    infer_case("bytes-element-lies.bin", body, 400, "declares 1000000000 bytes", header_len=n)
    one = {"name": "input", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}
    body, n = binary({"inputs": [one]}, struct.pack("<I", 5) + b"hello")
    infer_case("bytes-count-lies.bin", body, 400, "says 2 images but the data holds 1", header_len=n)
    bomb = (OUT / "images" / "bomb-header.png").read_bytes()
    img = {"name": "input", "shape": [1], "datatype": "BYTES",
           "parameters": {"binary_data_size": 4 + len(bomb)}}
    body, n = binary({"inputs": [img]}, struct.pack("<I", len(bomb)) + bomb)
    infer_case("bytes-bomb.bin", body, 400, "decompression bomb", header_len=n)

    # Model names with path separators, percent-encoded so that they reach the router whole.
    for name, path in [
        ("name-dotdot", "/v2/models/..%2F..%2Fetc%2Fpasswd/infer"),
        ("name-slash", "/v2/models/efficientnet-lite0%2F..%2Fx/infer"),
        ("name-backslash", "/v2/models/..%5C..%5Cwindows/infer"),
        ("classify-dotdot", "/v1/models/..%2Fmodels/classify"),
    ]:
        infer_case(f"{name}.json", request([fp32_input([1], [0])]), 404, "unknown model",
                   path=path)
    infer_case("version-dotdot.json", request([fp32_input([1], [0])]), 404, "version",
               path=f"/v2/models/{MODEL}/versions/..%2F1/infer")

    # Multipart classify forms that lie.
    good = encode(base_photo(), "PNG")
    form_ct = "multipart/form-data; boundary=XyZ"
    forms = [
        ("form-truncated.form", b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; "
         b"filename=\"a.png\"\r\n\r\n" + good[:100], "bad multipart form"),
        ("form-no-files.form", b"--XyZ--\r\n", "the form has no files"),
        ("form-bad-headers.form", b"--XyZ\r\nno colon\r\n\r\nx\r\n--XyZ--\r\n", "bad multipart form"),
        ("form-wrong-boundary.form", b"--Other\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n"
         b"x\r\n--Other--\r\n", "bad multipart form"),
    ]
    for name, body, error in forms:
        file = write(f"requests/{name}", body)
        cases.append(dict(name=f"request {name}", kind="http", method="POST", path=CLASSIFY,
                          file=file, content_type=form_ct, status=400, error=error))
    file = write("requests/form-no-boundary.form", b"--XyZ--\r\n")
    cases.append(dict(name="request form-no-boundary.form", kind="http", method="POST",
                      path=CLASSIFY, file=file, content_type="multipart/form-data", status=400,
                      error="boundary"))


# ---------------------------------------------------------------- model folders

def models():
    with open(ROOT / "models" / MODEL / "model.json") as f:
        good = json.load(f)
    bad = [
        ("onnx-dotdot", {"onnx": "../../../../etc/passwd"}, "onnx", "no `..`"),
        ("onnx-absolute", {"onnx": "/etc/passwd"}, "onnx", "no `..`"),
        ("labels-dotdot", {"labels": "../efficientnet-lite0/labels.txt"}, "labels", "no `..`"),
        ("groups-dotdot", {"label_groups": "sub/../../x.json"}, "label_groups", "no `..`"),
        ("name-slash", {"name": "../../evil"}, "name", "may use only letters"),
        ("name-backslash", {"name": "a\\b"}, "name", "may use only letters"),
        ("huge-dims", {"inputs": [{"name": "input", "dtype": "float32",
                                   "shape": [-1, 3, 100000, 100000]}]}, "inputs", ""),
    ]
    for name, change, field, error in bad:
        manifest = {**good, **change}
        file = write(f"models/{name}/model.json", json.dumps(manifest, indent=2).encode())
        cases.append(dict(name=f"model {name}", kind="model", dir=str(Path(file).parent),
                          field=field, error=error))
    file = write("models/deep-json/model.json", b"[" * 100000 + b"]" * 100000)
    cases.append(dict(name="model deep-json", kind="model", dir=str(Path(file).parent),
                      field="", error="not a valid model.json"))


# ---------------------------------------------------------------- fuzz seeds

def fuzz_seeds():
    shutil.rmtree(FUZZ, ignore_errors=True)

    def seed(target, name, data):
        path = FUZZ / target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    photo = base_photo().resize((24, 16))
    for fmt, ext in [("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp"),
                     ("BMP", "bmp"), ("TIFF", "tiff")]:
        seed("image", f"small.{ext}", encode(photo, fmt))
    for name in ["efficientnet-lite0", "digits-cnn"]:
        seed("manifest", f"{name}.json", (ROOT / "models" / name / "model.json").read_bytes())
    # OIP: two bytes of Inference-Header-Content-Length (top bit: present), then the body.
    row = [0.5] * 48
    json_req = request([fp32_input([1, 3, 4, 4], row)],
                       outputs=[{"name": "logits", "parameters": {"classification": 3}}])
    seed("oip_request", "json.bin", b"\x00\x00" + json_req)
    seed("oip_request", "nested.bin", b"\x00\x00" + request(
        [fp32_input([2, 3, 4, 4], [[[[0.25] * 4] * 4] * 3] * 2)]))
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 4, 4], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 192}}],
                       "parameters": {"binary_data_output": True}}).encode()
    seed("oip_request", "binary.bin", struct.pack("<H", 0x8000 | len(head)) + head + b"\x00" * 192)
    head = json.dumps({"inputs": [{"name": "input", "shape": [2, 1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": 14}}]}).encode()
    seed("oip_request", "bytes.bin", struct.pack("<H", 0x8000 | len(head)) + head
         + struct.pack("<I", 3) + b"abc" + struct.pack("<I", 3) + b"xyz")
    # The same target's tensor model: int64 ids and a bool mask of one length.
    seed("oip_request", "tensor.bin", b"\x00\x00" + request([
        {"name": "input_ids", "shape": [2, 3], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]},
        {"name": "attention_mask", "shape": [2, 3], "datatype": "BOOL",
         "data": [True, True, False, True, True, True]}]))
    head = json.dumps({"inputs": [
        {"name": "input_ids", "shape": [1, 2], "datatype": "INT64",
         "parameters": {"binary_data_size": 16}},
        {"name": "attention_mask", "shape": [1, 2], "datatype": "BOOL",
         "parameters": {"binary_data_size": 2}}]}).encode()
    seed("oip_request", "tensor-binary.bin", struct.pack("<H", 0x8000 | len(head)) + head
         + struct.pack("<2q", 7, 8) + b"\x01\x00")
    # ONNX files: the models the tests serve.
    for name, path in [("digits", "models/digits-cnn/model.onnx"),
                       ("token-pool", "tests/models/token-pool/model.onnx"),
                       ("dtypes", "tests/models/dtypes/model.onnx")]:
        seed("onnx_signature", f"{name}.onnx", (ROOT / path).read_bytes())
    # Multipart: the boundary, a newline, the body.
    seed("multipart", "two-files.txt", b"XyZ\n--XyZ\r\nContent-Disposition: form-data; "
         b"name=\"a\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8\xff\r\n"
         b"--XyZ\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\nhello\r\n--XyZ--\r\n")
    seed("multipart", "empty.txt", b"XyZ\n--XyZ--\r\n")
    # Cache records: payloads of the sizes the caches hold (a top-k answer, an output row).
    seed("cache_record", "topk.bin", json.dumps({"class": 281, "p": 0.5}).encode())
    seed("cache_record", "row.bin", struct.pack("<10f", *range(10)))


def main():
    for sub in ["images", "requests", "models"]:
        shutil.rmtree(OUT / sub, ignore_errors=True)
    images()
    requests()
    models()
    fuzz_seeds()
    (OUT / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(f"wrote {len(cases)} cases under {OUT.relative_to(ROOT)} and seeds under "
          f"{FUZZ.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
