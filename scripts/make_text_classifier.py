"""Trains and exports tests/models/sentiment-bow: a real (small, weak) text classifier for the
`text-classification` task, so that the tests and `classify --text` have a model whose answers
follow from its training data rather than from a random initialisation.

The model is logistic regression over bags of WordPiece tokens: every token of the bundled
all-MiniLM-L6-v2 tokenizer (30,522) has a weight; a text's logit for `positive` is the mean of
its tokens' weights (over the attention mask, [CLS] and [SEP] included) plus a bias, and its
logit for `negative` is the opposite. Trained with numpy (full-batch gradient descent, L2,
fixed iterations: rerunning writes the same bytes) on the UCI sentiment sentences
(tests/data/text/uci_sentiment.tsv): the first 400 of each source's 500 positives and 500
negatives (2,400) train it, the last 100 + 100 of each source (600) are held out.

ONNX graph (opset 17): Gather(weights[V,1], input_ids) → [B,S,1], times the mask, summed over
S and divided by the mask's sum, plus the bias → z; logits = Concat(-z, z) → [B, 2].

Writes model.onnx, model.json, labels.txt, tokenizer.json (the bundled tokenizer, copied) and
held_out.json (the 600 held-out texts, their labels and this script's own predicted
probabilities with onnxruntime, for the tests).

Usage: python3 scripts/make_text_classifier.py   (needs `pip install onnx numpy tokenizers onnxruntime`)
"""
import json
import os
import shutil

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
out = os.path.join(root, "tests/models/sentiment-bow")
tok_path = os.path.join(root, "models/all-minilm-l6-v2/tokenizer.json")

tok = Tokenizer.from_file(tok_path)
tok.no_padding()
tok.enable_truncation(max_length=256)
V = tok.get_vocab_size()

rows = []
with open(os.path.join(root, "tests/data/text/uci_sentiment.tsv"), encoding="utf-8") as f:
    next(f)
    for line in f:
        source, label, text = line.rstrip("\n").split("\t", 2)
        rows.append((source, int(label), text))

train, held = [], []
for source in ("amazon", "imdb", "yelp"):
    for label in (0, 1):
        group = [r for r in rows if r[0] == source and r[1] == label]
        train += group[:400]
        held += group[400:]


train_ids = [tok.encode(r[2]).ids for r in train]
seen = sorted({j for ids in train_ids for j in ids})  # only tokens the training set has
col = {j: k for k, j in enumerate(seen)}
xt = np.zeros((len(train), len(seen)))
for i, ids in enumerate(train_ids):
    for j in ids:
        xt[i, col[j]] += 1.0 / len(ids)
yt = np.array([r[1] for r in train], dtype=np.float64)
w = np.zeros(len(seen))
b = 0.0
# Adagrad on the mean logistic loss + L2; the positive-minus-negative logit is 2z.
l2, lr = 1e-4, 3.0
gw2, gb2 = np.full(len(seen), 1e-8), 1e-8
for _ in range(1500):
    p = 1.0 / (1.0 + np.exp(-2.0 * (xt @ w + b)))
    g = p - yt
    dw = 2.0 * xt.T @ g / len(yt) + l2 * w
    db = 2.0 * g.mean()
    gw2 += dw * dw
    gb2 += db * db
    w -= lr * dw / np.sqrt(gw2)
    b -= lr * db / np.sqrt(gb2)

full = np.zeros(V)
full[seen] = w
weights = full.astype(np.float32).reshape(V, 1)
bias = np.array([b], dtype=np.float32)

ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])
mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])
logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])
nodes = [
    helper.make_node("Gather", ["weights", "input_ids"], ["tw"], axis=0),  # [B,S,1]
    helper.make_node("Squeeze", ["tw", "axis2"], ["t"]),  # [B,S]
    helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
    helper.make_node("Mul", ["t", "m"], ["tm"]),
    helper.make_node("ReduceSum", ["tm", "axis1"], ["s"], keepdims=1),  # [B,1]
    helper.make_node("ReduceSum", ["m", "axis1"], ["n"], keepdims=1),
    helper.make_node("Max", ["n", "one"], ["n1"]),
    helper.make_node("Div", ["s", "n1"], ["mean"]),
    helper.make_node("Add", ["mean", "bias"], ["z"]),
    helper.make_node("Neg", ["z"], ["nz"]),
    helper.make_node("Concat", ["nz", "z"], ["logits"], axis=1),
]
init = [
    numpy_helper.from_array(weights, "weights"),
    numpy_helper.from_array(bias, "bias"),
    numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
    numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
]
graph = helper.make_graph(nodes, "sentiment-bow", [ids, mask], [logits], init)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                          producer_name="singlepoint scripts/make_text_classifier.py")
model.ir_version = 8
onnx.checker.check_model(model, full_check=True)
os.makedirs(out, exist_ok=True)
onnx.save(model, os.path.join(out, "model.onnx"))
shutil.copyfile(tok_path, os.path.join(out, "tokenizer.json"))
with open(os.path.join(out, "labels.txt"), "w") as f:
    f.write("negative\npositive\n")
with open(os.path.join(out, "model.json"), "w") as f:
    f.write("""{
  "name": "sentiment-bow",
  "version": "1",
  "task": "text-classification",
  "onnx": "model.onnx",
  "inputs": [
    { "name": "input_ids", "dtype": "int64", "shape": [-1, "sequence"] },
    { "name": "attention_mask", "dtype": "int64", "shape": [-1, "sequence"] }
  ],
  "outputs": [{ "name": "logits", "dtype": "float32", "shape": [-1, 2] }],
  "text": { "tokenizer": "tokenizer.json", "max_length": 256 },
  "postprocess": { "activation": "softmax" },
  "labels": "labels.txt"
}
""")

import onnxruntime as ort  # noqa: E402

so = ort.SessionOptions()
so.intra_op_num_threads = 1
sess = ort.InferenceSession(os.path.join(out, "model.onnx"), so)
probs = []
for _, label, text in held:
    e = tok.encode(text)
    r = sess.run(None, {"input_ids": np.array([e.ids], dtype=np.int64),
                        "attention_mask": np.array([e.attention_mask], dtype=np.int64)})[0][0]
    p = np.exp(r - r.max())
    probs.append(float((p / p.sum())[1]))
acc = np.mean([(p > 0.5) == (r[1] == 1) for p, r in zip(probs, held)])
train_acc = np.mean(((xt @ w + b) > 0) == (yt == 1))
with open(os.path.join(out, "held_out.json"), "w") as f:
    json.dump({
        "recipe": "tokenizer.json, truncation 256, no padding, one text at a time; onnxruntime, 1 thread",
        "train_accuracy": round(float(train_acc), 4),
        "held_out_accuracy": round(float(acc), 4),
        "texts": [{"text": r[2], "label": r[1], "positive": round(p, 6)} for p, r in zip(probs, held)],
    }, f, indent=0, ensure_ascii=False)
print(f"train accuracy {train_acc:.4f}, held-out accuracy {acc:.4f} (600 texts)")
