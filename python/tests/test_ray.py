"""singlepoint as Ray Data's worker, on a local Ray cluster this test starts: two actors, each
with its own model, answers equal to the CLI's, and a Redis shared by the replicas so that the
second run computes nothing."""

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import ray

from singlepoint.ray import Classify, Embed

from conftest import jsonl


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path):
    server = shutil.which("redis-server")
    assert server, "redis-server is needed (scripts/test installs Debian's)"
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster():
    # Two actors of one logical CPU each, and one for the tasks that read the files.
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_two_ray_workers_equal_the_cli_and_share_one_redis(root, cli, tmp_path, redis_url, cluster):
    folder = tmp_path / "photos"
    shutil.copytree(root / "photos", folder, ignore=shutil.ignore_patterns("*.md"))
    (folder / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    # Only the shared tier: every answer a worker does not compute comes from Redis.
    options = {
        "cache_redis": redis_url,
        "cache_redis_namespace": f"test-{uuid.uuid4().hex}",
        "cache_redis_timeout_ms": 1000,
        "cache_mem": "0",
        "cache_disk": "0",
    }

    def run():
        ds = ray.data.read_binary_files(str(folder), include_paths=True)
        out = ds.map_batches(
            Classify,
            fn_constructor_kwargs=options,
            compute=ray.data.ActorPoolStrategy(size=2),
            num_cpus=1,
            batch_size=2,
            batch_format="numpy",
        )
        return sorted(out.take_all(), key=lambda row: row["path"])

    first = run()
    second = run()

    want = jsonl(cli("classify", str(folder), "--format", "jsonl", "--no-cache").stdout)
    by_name = {Path(w["path"]).name: w for w in want}
    assert len(first) == len(by_name) == 8
    for row in first:
        expected = by_name[Path(row["path"]).name]
        if "error" in expected:
            assert row["error"] and row["source"] == "failed" and row["label"] == ""
        else:
            assert row["error"] == "", row
            assert row["label"] == expected["label"]
            assert abs(row["score"] - expected["top_k"][0]["probability"]) < 1e-5
    assert {r["source"] for r in first if not r["error"]} == {"computed"}
    # New actors, empty memory: Redis answers every image; the model runs for none.
    assert [r["label"] for r in second] == [r["label"] for r in first]
    assert {r["source"] for r in second if not r["error"]} == {"cache"}


def test_ray_embeds_texts_with_one_model_per_actor(root, cluster):
    texts = ["A man is eating food.", "A man is riding a horse.", "", "Two dogs play in the snow."]
    ds = ray.data.from_items([{"text": t} for t in texts])
    rows = ds.map_batches(Embed, fn_constructor_kwargs={"cache": False}, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1, batch_size=2, batch_format="numpy").take_all()
    import singlepoint as sp

    direct = sp.Model("all-minilm-l6-v2", cache=False).encode(texts)
    got = {r["text"]: r["embedding"] for r in rows}
    assert len(got) == len(texts)
    for t, v in zip(texts, direct):
        assert abs(float(got[t] @ v) - float(v @ v)) < 1e-4
