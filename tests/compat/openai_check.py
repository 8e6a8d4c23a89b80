"""OpenAI's own Python client against `singlepoint serve` with the bundled embedder:
`client.embeddings.create` with one text and with many, in float and base64 encodings, each
vector within cosine 0.999 of the reference (tests/data/text/expected_embeddings.json; texts
over the model's 256 tokens are refused, as OpenAI refuses them, so the one long reference
text is checked over /embed with truncate); concurrent requests from 16 threads batch
together (the server's metrics show more than one text per engine run); unsupported fields,
empty texts, token-id inputs and unknown models raise the client's own errors with the reason.
scripts/test runs it after the Rust tests.

Usage: python3 tests/compat/openai_check.py PATH/TO/singlepoint
"""
import base64
import concurrent.futures
import json
import os
import sys
import urllib.request

import numpy as np
import openai

import serve

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
binary = os.path.abspath(sys.argv[1])
reference = json.load(open(os.path.join(root, "tests/data/text/expected_embeddings.json")))
sentences = reference["sentences"]

# No cache: the per-user cache would answer texts a previous run embedded without a batch.
proc, address = serve.start(binary, ["--model", "models/all-minilm-l6-v2", "--max-queue-delay", "5ms",
                                     "--no-cache"], root)
try:
    client = openai.OpenAI(base_url=f"http://{address}/v1", api_key="unused", max_retries=0)
    model = "all-minilm-l6-v2"

    def cosine(a, b):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    fits = [s for s in sentences if s["tokens_untruncated"] == s["tokens_used"] and s["text"]]
    one = client.embeddings.create(model=model, input=fits[0]["text"])
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384, one
    assert cosine(one.data[0].embedding, fits[0]["embedding"]) >= 0.999
    assert one.usage.prompt_tokens == fits[0]["tokens_used"], one.usage
    many = client.embeddings.create(model=model, input=[s["text"] for s in fits])
    assert [d.index for d in many.data] == list(range(len(fits)))
    for d, s in zip(many.data, fits):
        c = cosine(d.embedding, s["embedding"])
        assert c >= 0.999, (s["text"], c)
    assert many.usage.prompt_tokens == sum(s["tokens_used"] for s in fits)
    # base64, as the client asks for it when numpy is present and it decodes itself
    raw = client.embeddings.with_raw_response.create(model=model, input=fits[1]["text"],
                                                     encoding_format="base64")
    body = json.loads(raw.http_response.text)
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert vector.shape == (384,) and cosine(vector, fits[1]["embedding"]) >= 0.999
    print(f"openai: {len(fits) + 2} texts within cosine 0.999 of the reference (float and base64)")

    # The long reference text: refused here (as OpenAI does), cut on request over /embed.
    long = next(s for s in sentences if s["tokens_untruncated"] > s["tokens_used"])
    try:
        client.embeddings.create(model=model, input=["fine", long["text"]])
        sys.exit("an over-long text was accepted")
    except openai.BadRequestError as e:
        assert "input[1]" in str(e) and "over the model's limit of 256" in str(e), e
    req = urllib.request.Request(f"http://{address}/embed", method="POST",
                                 data=json.dumps({"inputs": [long["text"]], "truncate": True}).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        assert r.headers["x-singlepoint-truncated"] == "0", dict(r.headers)
        cut = json.loads(r.read())[0]
    assert cosine(cut, long["embedding"]) >= 0.999

    for kwargs, want in [
        (dict(input="x", dimensions=8), "`dimensions` is not supported"),
        (dict(input=["ok", ""]), "`input[1]` is an empty string"),
        (dict(input=[[101, 102]]), "as token ids"),
    ]:
        try:
            client.embeddings.create(model=model, **kwargs)
            sys.exit(f"accepted: {kwargs}")
        except openai.BadRequestError as e:
            assert want in str(e), (kwargs, str(e))
    try:
        client.embeddings.create(model="nope", input="x")
        sys.exit("an unknown model was accepted")
    except openai.NotFoundError as e:
        assert "unknown model `nope`" in str(e), e
    print("openai: unsupported fields, empty texts, token ids and unknown models refused with the reason")

    # 16 clients at once: texts from different requests share engine runs.
    texts = [f"request {i}: {s['text']}" for i, s in enumerate(fits * 4)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda t: client.embeddings.create(model=model, input=t), texts))
    assert all(len(g.data[0].embedding) == 384 for g in got)
    metrics = urllib.request.urlopen(f"http://{address}/metrics").read().decode()
    def total(name):
        return sum(float(l.rsplit(" ", 1)[1]) for l in metrics.splitlines()
                   if l.startswith(name + "{") and f'"{model}"' in l)

    runs = total("singlepoint_model_executions_total")
    items = total("singlepoint_items_computed_total")
    assert runs and items and items > runs, (runs, items)
    print(f"openai: {len(texts)} concurrent requests in {runs:.0f} engine runs ({items / runs:.1f} texts a run)")
finally:
    proc.terminate()
    proc.wait()
print("openai client check passed")
