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
