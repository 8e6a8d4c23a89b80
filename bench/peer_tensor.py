"""The Python peer of `singlepoint serve` for a tensor model: the Open Inference Protocol's
binary infer endpoint (JSON header + raw FP32 tensor, `Inference-Header-Content-Length`) on
FastAPI + uvicorn, with dynamic batching (an asyncio queue: up to --max-batch-size requests,
waiting at most --batch-timeout for more) and onnxruntime sessions run on a thread pool (ORT
releases the GIL), answering the output as binary data, as Triton does.

Usage: python3 bench/peer_tensor.py MODEL.onnx PORT [--sessions 2] [--ort-threads 1]
                                   [--max-batch-size 8] [--batch-timeout 0.002]
(--ort-threads 0 leaves ONNX Runtime's default: one intra-op thread per core)
"""
import argparse, asyncio, json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request, Response

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("port", type=int)
p.add_argument("--sessions", type=int, default=2)
p.add_argument("--ort-threads", type=int, default=1)
p.add_argument("--max-batch-size", type=int, default=8)
p.add_argument("--batch-timeout", type=float, default=0.002)
args = p.parse_args()

opts = ort.SessionOptions()
if args.ort_threads > 0:
    opts.intra_op_num_threads = args.ort_threads
# One session per pool thread: each batch runs on its own session, as singlepoint's instances.
sessions = [ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
            for _ in range(args.sessions)]
free = asyncio.Queue()
pool = ThreadPoolExecutor(args.sessions)
inp = sessions[0].get_inputs()[0]
out_name = sessions[0].get_outputs()[0].name
item_shape = [d for d in inp.shape[1:]]
queue = asyncio.Queue()
app = FastAPI()


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
    x = np.concatenate([b[0] for b in batch])
    try:
        y = await loop.run_in_executor(pool, lambda: session.run([out_name], {inp.name: x})[0])
        at = 0
        for rows, fut in batch:
            fut.set_result(y[at:at + len(rows)])
            at += len(rows)
    except Exception as e:  # every waiter learns of it
        for _, fut in batch:
            fut.set_exception(e)
    finally:
        free.put_nowait(session)


@app.on_event("startup")
async def start():
    asyncio.create_task(batcher())


@app.get("/v2/health/ready")
async def ready():
    return {"ready": True}


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request):
    body = await request.body()
    n = int(request.headers["inference-header-content-length"])
    header = json.loads(body[:n])
    spec = header["inputs"][0]
    x = np.frombuffer(body[n:], dtype=np.float32).reshape(spec["shape"])
    fut = asyncio.get_running_loop().create_future()
    await queue.put((x, fut))
    y = await fut
    data = y.astype(np.float32).tobytes()
    head = json.dumps({"model_name": name, "outputs": [{
        "name": out_name, "datatype": "FP32", "shape": list(y.shape),
        "parameters": {"binary_data_size": len(data)}}]}).encode()
    return Response(head + data, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
