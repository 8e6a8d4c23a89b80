"""Makes the small tensor models the tests serve, with the `onnx` package (deterministic: a
fixed seed, so rerunning writes the same bytes).

- tests/models/token-pool/model.onnx: two int64 inputs of variable length, `input_ids` and
  `attention_mask` [batch, sequence], as a tokenised text model takes them. It embeds the ids
  (a 32 x 8 table), and gives `pooled` float32 [batch, 8] (the mask-weighted mean of the
  embeddings), `token_scores` float32 [batch, sequence] (a score per token, 0 where the mask
  is 0) and `lengths` int64 [batch, 1] (the mask's sum). Padding with ids 0 and mask 0 leaves
  every output of the real tokens unchanged: the model is what `pad` in a manifest is for.
- tests/models/dtypes/model.onnx: one input and one output of each element type singlepoint
  carries besides float32 (float16, int32, int8, uint8, bool), each output a simple function of
  its input, plus `total` float32 [batch, 1].

- tests/models/quadrants-yolov8/: an object detector in the YOLOv5/v8 output layout, one
  output [batch, 4 + classes, N]. Its four candidates are the quadrants of its 64 x 64 input
  (cx, cy, w, h in input pixels); each quadrant's score for `red` is its mean of R - (G + B)/2
  and for `blue` of B - (R + G)/2 (pixels scaled to 0..1), clipped to 0..1. So a red square
  covering half a quadrant scores 0.5: what it detects follows from the picture by hand.
  With model.json (letterbox 64 x 64, pad 114) and labels.txt.

Usage: python3 scripts/make_test_models.py   (needs `pip install onnx numpy`)
"""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OPSET = [helper.make_opsetid("", 17)]


def save(model, rel):
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(model, path)
    print(f"wrote {rel} ({os.path.getsize(path)} bytes)")


def quadrants_yolov8():
    # [B, 3, 64, 64] -> quadrant means [B, 3, 2, 2] -> colour excess [B, 2, 2, 2] -> [B, 2, 4]
    colour = np.array([[1.0, -0.5, -0.5], [-0.5, -0.5, 1.0]], np.float32).reshape(2, 3, 1, 1)
    # Rows cx, cy, w, h; columns the quadrants in row-major order (TL, TR, BL, BR).
    boxes = np.array([[16, 48, 16, 48], [16, 16, 48, 48], [32] * 4, [32] * 4], np.float32)
    nodes = [
        helper.make_node("AveragePool", ["images"], ["means"], kernel_shape=[32, 32], strides=[32, 32]),
        helper.make_node("Conv", ["means", "colour"], ["excess"]),
        helper.make_node("Clip", ["excess", "zero", "one"], ["clipped"]),
        helper.make_node("Reshape", ["clipped", "score_shape"], ["scores"]),  # [B, 2, 4]
        # The boxes, broadcast to the batch: 0 x the first class row + the constant rows.
        helper.make_node("Slice", ["scores", "start", "end", "axis1"], ["first"]),  # [B, 1, 4]
        helper.make_node("Mul", ["first", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "boxes"], ["batch_boxes"]),  # [B, 4, 4]
        helper.make_node("Concat", ["batch_boxes", "scores"], ["output0"], axis=1),  # [B, 6, 4]
    ]
    graph = helper.make_graph(
        nodes,
        "quadrants-yolov8",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 6, 4])],
        [
            numpy_helper.from_array(colour, "colour"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array([-1, 2, 4], np.int64), "score_shape"),
            numpy_helper.from_array(np.array([0], np.int64), "start"),
            numpy_helper.from_array(np.array([1], np.int64), "end"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(boxes[None], "boxes"),
        ],
    )
    save(helper.make_model(graph, opset_imports=OPSET, producer_name="singlepoint-tests"),
         "tests/models/quadrants-yolov8/model.onnx")
    folder = os.path.join(root, "tests/models/quadrants-yolov8")
    with open(os.path.join(folder, "labels.txt"), "w") as f:
        f.write("red\nblue\n")
    manifest = {
        "name": "quadrants-yolov8",
        "version": "1",
        "task": "object-detection",
        "onnx": "model.onnx",
        "inputs": [{"name": "images", "dtype": "float32", "shape": [-1, 3, 64, 64]}],
        "outputs": [{"name": "output0", "dtype": "float32", "shape": [-1, 6, 4]}],
        "preprocess": {
            "color": "rgb",
            "resize": {"letterbox": [64, 64], "pad": 114, "filter": "bilinear"},
            "scale": 1.0,
            "mean": [0.0, 0.0, 0.0],
            "std": [255.0, 255.0, 255.0],
            "layout": "nchw",
        },
        "detection": {
            "layout": "yolov8",
            "score_threshold": 0.25,
            "iou_threshold": 0.45,
            "max_detections": 10,
            "min_score": 0.05,
        },
        "labels": "labels.txt",
    }
    import json
    with open(os.path.join(folder, "model.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


def token_pool():
    rng = np.random.default_rng(12)
    table = rng.normal(size=(32, 8)).astype(np.float32)
    weight = rng.normal(size=(8, 1)).astype(np.float32)
    seq = ["batch", "sequence"]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"], axis=0),  # [B, L, 8]
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),  # [B, L]
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),  # [B, L, 1]
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),  # [B, 8]
        helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),  # [B, 1]
        helper.make_node("Max", ["count", "one"], ["safe_count"]),
        helper.make_node("Div", ["summed", "safe_count"], ["pooled"]),
        helper.make_node("MatMul", ["emb", "weight"], ["scores3"]),  # [B, L, 1]
        helper.make_node("Squeeze", ["scores3", "axis2"], ["scores"]),  # [B, L]
        helper.make_node("Mul", ["scores", "maskf"], ["token_scores"]),
        helper.make_node("ReduceSum", ["attention_mask", "axis1"], ["lengths"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "token-pool",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, seq),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, seq),
        ],
        [
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("token_scores", TensorProto.FLOAT, seq),
            helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch", 1]),
        ],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
            numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
        ],
    )
    save(helper.make_model(graph, opset_imports=OPSET, producer_name="singlepoint-tests"),
         "tests/models/token-pool/model.onnx")


def dtypes():
    types = [("f16", TensorProto.FLOAT16, 3), ("i32", TensorProto.INT32, 2),
             ("i8", TensorProto.INT8, 2), ("u8", TensorProto.UINT8, 4), ("b", TensorProto.BOOL, 3)]
    nodes = [
        helper.make_node("Add", ["x_f16", "x_f16"], ["y_f16"]),
        helper.make_node("Add", ["x_i32", "one_i32"], ["y_i32"]),
        helper.make_node("Neg", ["x_i8"], ["y_i8"]),
        helper.make_node("Add", ["x_u8", "one_u8"], ["y_u8"]),
        helper.make_node("Not", ["x_b"], ["y_b"]),
        helper.make_node("Cast", ["x_i32"], ["i32f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["x_u8"], ["u8f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["i32f", "axis1"], ["s1"], keepdims=1),
        helper.make_node("ReduceSum", ["u8f", "axis1"], ["s2"], keepdims=1),
        helper.make_node("Add", ["s1", "s2"], ["total"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dtypes",
        [helper.make_tensor_value_info(f"x_{n}", t, ["batch", w]) for n, t, w in types],
        [helper.make_tensor_value_info(f"y_{n}", t, ["batch", w]) for n, t, w in types]
        + [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 1])],
        [
            numpy_helper.from_array(np.array([1], dtype=np.int32), "one_i32"),
            numpy_helper.from_array(np.array([1], dtype=np.uint8), "one_u8"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        ],
    )
    save(helper.make_model(graph, opset_imports=OPSET, producer_name="singlepoint-tests"),
         "tests/models/dtypes/model.onnx")


if __name__ == "__main__":
    token_pool()
    dtypes()
    quadrants_yolov8()
