"""The Python peer of `singlepoint serve` for text embeddings: OpenAI's `POST /v1/embeddings`
on FastAPI + uvicorn with the Hugging Face `tokenizers` library (Rust, called from Python) and
onnxruntime, dynamic batching on an asyncio queue (up to --max-batch-size texts, waiting at
most --batch-timeout for more; the batch tokenised in one call, padded to its longest text),
sessions run on a thread pool (ORT releases the GIL), mean pooling and L2 normalisation in
numpy: the recipe of tests/data/text/make_expected_embeddings.py. With --workers N, N such
processes share the listening socket (SO_REUSEPORT), as gunicorn or `uvicorn --workers` would
run them, each with its own sessions and event loop.

Usage: python3 bench/peer_embed.py MODEL.onnx TOKENIZER.json PORT [--sessions 2]
                                  [--ort-threads 1] [--max-batch-size 32] [--batch-timeout 0.002]
                                  [--workers 1]
"""
import argparse, asyncio, json, os, socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request, Response
from tokenizers import Tokenizer

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("tokenizer")
p.add_argument("port", type=int)
p.add_argument("--sessions", type=int, default=2)
p.add_argument("--ort-threads", type=int, default=1)
p.add_argument("--max-batch-size", type=int, default=32)
p.add_argument("--batch-timeout", type=float, default=0.002)
p.add_argument("--workers", type=int, default=1)
args = p.parse_args()

# The socket is bound before forking, the sessions made after (ORT's threads do not fork).
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
sock.bind(("127.0.0.1", args.port))
for _ in range(args.workers - 1):
    if os.fork() == 0:
        break

tok = Tokenizer.from_file(args.tokenizer)
tok.enable_truncation(max_length=256)
tok.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in the batch
opts = ort.SessionOptions()
if args.ort_threads > 0:
    opts.intra_op_num_threads = args.ort_threads
sessions = [ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
            for _ in range(args.sessions)]
free = asyncio.Queue()
pool = ThreadPoolExecutor(args.sessions)
queue = asyncio.Queue()
app = FastAPI()


def embed(session, texts):
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    h = session.run(None, {"input_ids": ids, "attention_mask": mask,
                           "token_type_ids": np.zeros_like(ids)})[0]
    m = mask[:, :, None].astype(np.float32)
    e = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return e, mask.sum(1)


async def batcher():
    for s in sessions:
        free.put_nowait(s)
    loop = asyncio.get_running_loop()
    while True:
        first = await queue.get()
        batch = [first]
        deadline = loop.time() + args.batch_timeout
        while len(batch) < args.max_batch_size:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), left))
            except asyncio.TimeoutError:
                break
        session = await free.get()
        asyncio.create_task(run(session, batch))


async def run(session, batch):
    loop = asyncio.get_running_loop()
    try:
        e, n = await loop.run_in_executor(pool, embed, session, [t for t, _ in batch])
        for i, (_, fut) in enumerate(batch):
            fut.set_result((e[i], int(n[i])))
    except Exception as exc:  # noqa: BLE001
        for _, fut in batch:
            fut.set_exception(exc)
    finally:
        free.put_nowait(session)


@app.on_event("startup")
async def start():
    asyncio.create_task(batcher())


@app.get("/health")
async def health():
    return {"ok": True}


@app.post("/v1/embeddings")
async def embeddings(request: Request):
    body = json.loads(await request.body())
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    loop = asyncio.get_running_loop()
    futs = [loop.create_future() for _ in texts]
    for t, f in zip(texts, futs):
        queue.put_nowait((t, f))
    got = [await f for f in futs]
    tokens = sum(n for _, n in got)
    return Response(json.dumps({
        "object": "list", "model": body.get("model"),
        "data": [{"object": "embedding", "index": i, "embedding": e.tolist()} for i, (e, _) in enumerate(got)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }), media_type="application/json")


uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
