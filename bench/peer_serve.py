"""The Python peer of `singlepoint serve`: LitServe with PIL + onnxruntime, its own dynamic
batching on, the bundled model's preprocessing (shorter side 256 bilinear, centre crop 224,
(x-127)/128). Takes the same multipart upload as POST /v1/models/{name}/classify (one file per
request) and answers the top label.

Usage: python3 bench/peer_serve.py MODEL_DIR PORT [--workers 2] [--ort-threads 1]
                                 [--max-batch-size 8] [--batch-timeout 0.002]
(--ort-threads 0 leaves ONNX Runtime's default: one intra-op thread per core)
"""
import argparse, io
import numpy as np
import onnxruntime as ort
import litserve as ls
from PIL import Image
from pil_preprocess import preprocess

p = argparse.ArgumentParser()
p.add_argument("model_dir")
p.add_argument("port", type=int)
p.add_argument("--workers", type=int, default=2)
p.add_argument("--ort-threads", type=int, default=1)
p.add_argument("--max-batch-size", type=int, default=8)
p.add_argument("--batch-timeout", type=float, default=0.002)
args = p.parse_args()


def prepare(data):
    return preprocess(Image.open(io.BytesIO(data)).convert("RGB"))


class Classifier(ls.LitAPI):
    def setup(self, device):
        opts = ort.SessionOptions()
        # Tuned: one intra-op thread per worker process, as singlepoint runs one per instance.
        if args.ort_threads > 0:
            opts.intra_op_num_threads = args.ort_threads
        self.sess = ort.InferenceSession(f"{args.model_dir}/model.onnx", opts,
                                         providers=["CPUExecutionProvider"])
        self.labels = open(f"{args.model_dir}/labels.txt").read().splitlines()

    def decode_request(self, request):
        upload = request["file"]
        data = upload.file.read() if hasattr(upload, "file") else upload
        return prepare(data)

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        return self.sess.run(None, {"input": x})[0]

    def unbatch(self, output):
        return list(output)

    def encode_response(self, row):
        return {"label": self.labels[int(np.argmax(row))]}


if __name__ == "__main__":
    api = Classifier(max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers)
    server.run(port=args.port, generate_client_file=False)
