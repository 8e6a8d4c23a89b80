"""The bundled model's preprocessing in PIL + numpy, as the Python peers run it: shorter side to
256 with Pillow's (antialiased) bilinear resize, centre crop 224, (x - 127) / 128, CHW."""
import numpy as np
from PIL import Image


def preprocess(img):
    w, h = img.size
    if w <= h:
        nw, nh = 256, round(256 * h / w)
    else:
        nw, nh = round(256 * w / h), 256
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = round((nw - 224) / 2), round((nh - 224) / 2)
    img = img.crop((left, top, left + 224, top + 224))
    return ((np.asarray(img, dtype=np.float32) - 127.0) / 128.0).transpose(2, 0, 1)
