"""Ray Data with singlepoint as the worker: a callable class that holds one model per actor.

::

    import ray
    from singlepoint.ray import Classify

    ds = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)
    labelled = ds.map_batches(
        Classify,
        fn_constructor_kwargs={"cache_redis": "redis://cache:6379"},  # shared by every replica
        compute=ray.data.ActorPoolStrategy(size=8),  # actors, each with its own model
        num_cpus=1,               # the cores each actor's model uses (threads=num_cpus)
        batch_size=64,
        batch_format="numpy",
    )
    labelled.write_parquet("s3://bucket/labels/")

Each actor loads the model once, in its constructor; each batch's encoded images go through
the same single point as ``singlepoint classify`` (result cache, coalescing, batching, engine
sessions), and a bad image is a row with its ``error``, not a failed task. With
``cache_redis``, every replica reads and fills one Redis: an image any of them has answered is
answered again without running the model, on this cluster or the next job's.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from . import Model


def _column(batch: Dict[str, Any], name: str):
    if name not in batch:
        raise KeyError(f"the batch has no `{name}` column (it has {sorted(batch)})")
    return batch[name]


class Classify:
    """``map_batches`` callable: the ``bytes`` column (``read_binary_files``) → ``path``,
    ``label``, ``score``, ``source`` (computed, cache, coalesced, failed) and ``error``
    (empty when the image has an answer).

    Args:
        model: as :func:`singlepoint.load_model` (default: the bundled classifier).
        threads: cores the actor's model uses (default 1: one actor per core; set it to the
            ``num_cpus`` you give ``map_batches``).
        **options: any :class:`singlepoint.Model` option (``cache_redis``, ``cache_dir``,
            ``batch_size``, ...).
    """

    def __init__(self, model: Optional[str] = None, threads: int = 1, **options: Any) -> None:
        self.model = Model(model, threads=threads, **options)

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        import numpy as np

        blobs = _column(batch, "bytes")
        paths = batch.get("path")
        names = [str(p) for p in paths] if paths is not None else [f"item {i}" for i in range(len(blobs))]
        results = self.model.classify([(n, bytes(b)) for n, b in zip(names, blobs)])
        # Redis writes go behind the answers; an actor may end right after its last batch.
        self.model.flush()
        return {
            "path": np.array(names, dtype=object),
            "label": np.array([r.label or "" for r in results], dtype=object),
            "score": np.array([r.score if r.ok else float("nan") for r in results], dtype=np.float32),
            "source": np.array([r.source for r in results], dtype=object),
            "error": np.array([r.error or "" for r in results], dtype=object),
        }


class Embed:
    """``map_batches`` callable for a text-embedding model: the ``text`` column (say,
    ``read_text``) → ``text``, ``embedding`` (float32 vectors; empty when the text failed),
    ``source`` and ``error``. Options as for :class:`Classify` (default model: the bundled
    all-MiniLM-L6-v2)."""

    def __init__(self, model: Optional[str] = "all-minilm-l6-v2", threads: int = 1, **options: Any) -> None:
        self.model = Model(model, threads=threads, **options)

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        import numpy as np

        texts = [str(t) for t in _column(batch, "text")]
        found = self.model.embed(texts)
        self.model.flush()
        empty = np.zeros(0, dtype=np.float32)
        return {
            "text": np.array(texts, dtype=object),
            "embedding": np.array([e.vector if e.ok else empty for e in found], dtype=object),
            "source": np.array([e.source for e in found], dtype=object),
            "error": np.array([e.error or "" for e in found], dtype=object),
        }
