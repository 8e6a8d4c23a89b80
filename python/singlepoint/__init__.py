"""singlepoint from Python: the same engine, cache and batching as the ``singlepoint`` CLI.

The original design's script runs with only the module names changed::

    import singlepoint as sp

    model = sp.load_model("model.json")          # a manifest, a model folder, or a bundled name
    images = sp.process_images("images/*.jpg")   # lazy: nothing is read until it is computed
    results = sp.compute(images)                 # the last loaded model (or model.compute(images))
    for i, result in enumerate(results):
        print(f"Image {i}: {result}")            # Image 0: cat

Everything runs in the native module (``singlepoint._native``, Rust): the runtime's single
point with its result cache (memory, disk, Redis), in-flight coalescing, batching and engine
sessions on ONNX Runtime (fetched on first use) or tract. The GIL is released while a call
computes. A bad input is a result with an ``error`` in its place, never an exception that
ends the loop; only a wrong call (a bad option, a model of another task) raises.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from . import _native
from ._native import __version__

__all__ = [
    "Detection",
    "Detections",
    "Embedding",
    "Images",
    "Model",
    "Result",
    "TensorResult",
    "TextResult",
    "__version__",
    "compute",
    "load_model",
    "onnxruntime",
    "process_images",
]

PathLike = Union[str, "os.PathLike[str]"]

#: The model ``compute`` uses when none is given: the one ``load_model`` loaded last.
_current: Optional["Model"] = None


class Result:
    """One image's classification. ``str(result)`` is its label, or ``error: ...``.

    Attributes:
        index: position among the call's inputs, from 0.
        path: the file (or the name given with bytes, ``row N`` for tensor rows).
        source: ``computed``, ``cache`` (the result cache answered; the model did not run),
            ``coalesced`` (shared an identical input's computation) or ``failed``.
        label: the top class's display label (``None`` when the input failed).
        top_k: the best classes as ``(label, probability)``, best first.
        error: why the input has no answer (``None`` when it has one).
    """

    __slots__ = ("index", "path", "source", "label", "top_k", "error")

    def __init__(
        self,
        index: int,
        path: str,
        source: str,
        label: Optional[str],
        top_k: List[Tuple[str, float]],
        error: Optional[str],
    ) -> None:
        self.index = index
        self.path = path
        self.source = source
        self.label = label
        self.top_k = top_k
        self.error = error

    @property
    def ok(self) -> bool:
        """Whether the input has an answer."""
        return self.error is None

    @property
    def score(self) -> Optional[float]:
        """The top class's probability."""
        return self.top_k[0][1] if self.top_k else None

    def __str__(self) -> str:
        return self.label if self.error is None else f"error: {self.error}"

    def __repr__(self) -> str:
        if self.error is not None:
            return f"Result(index={self.index}, path={self.path!r}, error={self.error!r})"
        return (
            f"Result(index={self.index}, path={self.path!r}, label={self.label!r}, "
            f"score={self.score:.4f}, source={self.source!r})"
        )


class Detection:
    """One object: its class, score and box ``(x1, y1, x2, y2)`` in the image's pixels."""

    __slots__ = ("label", "class_index", "score", "box")

    def __init__(self, label: str, class_index: int, score: float, box: Tuple[float, ...]):
        self.label = label
        self.class_index = class_index
        self.score = score
        self.box = tuple(box)

    def __str__(self) -> str:
        x1, y1, x2, y2 = (round(v) for v in self.box)
        return f"{self.label} {self.score:.2f} [{x1},{y1},{x2},{y2}]"

    def __repr__(self) -> str:
        return f"Detection({self})"


class Detections:
    """One image's (or video frame's) detections; ``str()`` reads as the CLI's line does.

    Attributes:
        index, path, source, error: as for :class:`Result`.
        frame: ``(frame index, seconds)`` for a video frame, else ``None``.
        detections: the :class:`Detection` list, best first.
    """

    __slots__ = ("index", "path", "source", "frame", "detections", "error")

    def __init__(self, index, path, source, frame, detections, error) -> None:
        self.index = index
        self.path = path
        self.source = source
        self.frame = frame
        self.detections = [Detection(*d) for d in detections]
        self.error = error

    @property
    def ok(self) -> bool:
        return self.error is None

    def __iter__(self) -> Iterator[Detection]:
        return iter(self.detections)

    def __len__(self) -> int:
        return len(self.detections)

    def __str__(self) -> str:
        if self.error is not None:
            return f"error: {self.error}"
        return ", ".join(str(d) for d in self.detections) or "nothing"

    def __repr__(self) -> str:
        return f"Detections(index={self.index}, path={self.path!r}, {self})"


class Embedding:
    """One text's embedding.

    Attributes:
        index, source, error: as for :class:`Result`.
        vector: a float32 numpy array (``None`` when the text failed).
        tokens: tokens the model read; ``truncated`` is true when the text was longer.
    """

    __slots__ = ("index", "source", "vector", "tokens", "whole", "error")

    def __init__(self, index, source, vector, tokens, whole, error) -> None:
        self.index = index
        self.source = source
        self.vector = None if vector is None else _numpy().frombuffer(vector, dtype="<f4")
        self.tokens = tokens
        self.whole = whole
        self.error = error

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def truncated(self) -> bool:
        return self.whole > self.tokens

    def __repr__(self) -> str:
        if self.error is not None:
            return f"Embedding(index={self.index}, error={self.error!r})"
        return f"Embedding(index={self.index}, dims={len(self.vector)}, tokens={self.tokens})"


class TextResult(Result):
    """One text's classification (a :class:`Result`), with the tokens the model read."""

    __slots__ = ("tokens", "whole")

    def __init__(self, index, source, label, top_k, tokens, whole, error) -> None:
        super().__init__(index, f"text {index}", source, label, top_k, error)
        self.tokens = tokens
        self.whole = whole

    @property
    def truncated(self) -> bool:
        return self.whole > self.tokens


class TensorResult:
    """One row's outputs from a ``tensor`` model: ``outputs[name]`` is a numpy array."""

    __slots__ = ("index", "source", "outputs", "error")

    def __init__(self, index, source, outputs, error) -> None:
        np = _numpy()
        self.index = index
        self.source = source
        self.error = error
        self.outputs: Optional[Dict[str, Any]] = None
        if outputs is not None:
            self.outputs = {
                name: np.frombuffer(data, dtype=_DTYPES[datatype]).reshape(shape)
                for name, datatype, shape, data in outputs
            }

    @property
    def ok(self) -> bool:
        return self.error is None

    def __getitem__(self, name: str):
        if self.outputs is None:
            raise KeyError(f"row {self.index} failed: {self.error}")
        return self.outputs[name]

    def __repr__(self) -> str:
        if self.error is not None:
            return f"TensorResult(index={self.index}, error={self.error!r})"
        shapes = {k: tuple(v.shape) for k, v in self.outputs.items()}
        return f"TensorResult(index={self.index}, {shapes})"


# OIP datatypes and the little-endian numpy types they travel as.
_DTYPES = {
    "FP32": "<f4",
    "FP16": "<f2",
    "INT64": "<i8",
    "INT32": "<i4",
    "INT8": "i1",
    "UINT8": "u1",
    "BOOL": "?",
}
_KINDS = {
    ("f", 4): "FP32",
    ("f", 2): "FP16",
    ("i", 8): "INT64",
    ("i", 4): "INT32",
    ("i", 1): "INT8",
    ("u", 1): "UINT8",
    ("b", 1): "BOOL",
}


def _numpy():
    import numpy

    return numpy


def _wire(array) -> Tuple[str, List[int], bytes]:
    """A numpy array as (OIP datatype, shape, little-endian bytes)."""
    np = _numpy()
    array = np.asarray(array)
    kind = _KINDS.get((array.dtype.kind, array.dtype.itemsize))
    if kind is None:
        raise TypeError(f"arrays of {array.dtype} are not a tensor type the engine takes")
    data = np.ascontiguousarray(array, dtype=np.dtype(_DTYPES[kind]))
    return kind, list(array.shape), data.tobytes()


class Images:
    """Images named by files, folders (walked recursively, in name order) and glob patterns.

    Lazy: nothing is listed or read until the images are computed or iterated. Iterating
    yields each path as a run would take it; a pattern that matches nothing, or a file that
    is missing, is still one entry, and computing it gives an error in its place.
    """

    def __init__(self, *patterns: PathLike) -> None:
        if not patterns:
            raise ValueError("process_images needs at least one file, folder or pattern")
        self.patterns = [os.fspath(p) for p in patterns]

    def __iter__(self) -> Iterator[str]:
        return iter(_native.expand_inputs(self.patterns))

    def __repr__(self) -> str:
        return f"Images({', '.join(repr(p) for p in self.patterns)})"


ImageInputs = Union[Images, PathLike, bytes, Sequence[Union[PathLike, bytes, Tuple[str, bytes]]], Any]


class Model:
    """A model on its engine, with its result cache.

    Args:
        model: a ``model.json``, a model folder, or a bundled model's name
            (``efficientnet-lite0``, ``yolov3-tiny``, ``all-minilm-l6-v2``); ``None`` is the
            bundled image classifier.
        backend: ``auto`` (ONNX Runtime, fetched on first use, else tract), ``ort`` or ``tract``.
        threads, instances, batch_size: as the CLI's flags (defaults: every core, one instance
            per thread, the task's batch).
        top_k: classes kept per answer.
        cache, cache_dir, cache_mem, cache_disk, cache_ttl, cache_redis, ...: the CLI's cache
            flags (``cache=False`` is ``--no-cache``; sizes such as ``"256MiB"``; ``cache_ttl``
            in seconds; ``cache_dir`` defaults to ``$SINGLEPOINT_CACHE_DIR``, else the per-user
            cache; ``cache_redis`` a ``redis://`` URL shared by every replica).
        fetch: allow fetching ONNX Runtime (from PyPI, with pip) when it is not installed.
    """

    def __init__(
        self,
        model: Optional[PathLike] = None,
        *,
        backend: str = "auto",
        threads: Optional[int] = None,
        instances: Optional[int] = None,
        batch_size: Optional[int] = None,
        top_k: int = 5,
        max_pixels: Optional[int] = None,
        cache: bool = True,
        cache_dir: Optional[PathLike] = None,
        cache_mem: Union[str, int] = "256MiB",
        cache_disk: Union[str, int] = "2GiB",
        cache_ttl: Optional[float] = None,
        cache_redis: Optional[str] = None,
        cache_redis_namespace: str = "singlepoint",
        cache_redis_timeout_ms: int = 5,
        cache_redis_pool: int = 8,
        fetch: bool = True,
    ) -> None:
        self._native = _native.NativeModel(
            None if model is None else os.fspath(model),
            backend=backend,
            threads=threads,
            instances=instances,
            batch_size=batch_size,
            top_k=top_k,
            max_pixels=max_pixels,
            cache=cache,
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else os.environ.get("SINGLEPOINT_CACHE_DIR") or None,
            cache_mem=str(cache_mem),
            cache_disk=str(cache_disk),
            cache_ttl=cache_ttl,
            cache_redis=cache_redis,
            cache_redis_namespace=cache_redis_namespace,
            cache_redis_timeout_ms=cache_redis_timeout_ms,
            cache_redis_pool=cache_redis_pool,
            fetch=fetch,
        )
        self.info: Dict[str, Any] = self._native.info()
        #: What loading said (a fetched runtime, the fallback engine, a cache problem).
        self.warnings: List[str] = self._native.warnings()

    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def task(self) -> str:
        return self.info["task"]

    @property
    def engine(self) -> str:
        return self.info["engine"]

    def __repr__(self) -> str:
        return f"Model({self.name!r}, task={self.task!r}, engine={self.engine!r})"

    def compute(self, inputs: Any) -> list:
        """Answers every input with this model's task, in order.

        An image classifier (:meth:`classify`) and a detector (:meth:`detect`) take images; a
        text model takes texts (:meth:`embed`, :meth:`classify_texts`); a ``tensor`` model takes
        numpy arrays (:meth:`run`).
        """
        task = self.task
        if task == "image-classification":
            return self.classify(inputs)
        if task == "object-detection":
            return self.detect(inputs)
        if task == "text-embedding":
            return self.embed(inputs)
        if task == "text-classification":
            return self.classify_texts(inputs)
        return self.run(inputs)

    def classify(self, images: ImageInputs) -> List[Result]:
        """Classifies images: :func:`process_images`, paths, folders, glob patterns, encoded
        image bytes (or ``(name, bytes)`` pairs), or a numpy array of the model's preprocessed
        input (float32, the model's shape with any batch)."""
        native = self._native
        if _is_array(images):
            kind, shape, data = _wire(images)
            rows = native.classify_tensor(kind, shape, data)
        else:
            kind, items = _image_items(images)
            if kind == "bytes":
                rows = native.classify_bytes(items)
            else:
                rows = native.classify_paths(items)
        return [Result(*row) for row in rows]

    def detect(
        self,
        images: ImageInputs,
        *,
        score: Optional[float] = None,
        iou: Optional[float] = None,
        max_detections: Optional[int] = None,
        classes: Optional[Sequence[str]] = None,
        fps: Optional[float] = None,
    ) -> List[Detections]:
        """Detects objects in images and videos (files, folders, globs); each video frame
        (sampled at ``fps`` when given) is one :class:`Detections` with its ``frame``."""
        kind, items = _image_items(images)
        if kind == "bytes":
            raise TypeError("detect takes files, folders and patterns (not bytes)")
        rows = self._native.detect_paths(
            items,
            score=score,
            iou=iou,
            max_detections=max_detections,
            classes=None if classes is None else list(classes),
            fps=fps,
        )
        return [Detections(*row) for row in rows]

    def embed(
        self, texts: Union[str, Iterable[str]], *, truncate: bool = True, normalize: Optional[bool] = None
    ) -> List[Embedding]:
        """Embeds texts (a string or an iterable of strings); over the model's token limit a
        text is cut (and says so: ``truncated``) unless ``truncate=False``, then it fails."""
        rows = self._native.embed(_texts(texts), truncate=truncate, normalize=normalize)
        return [Embedding(*row) for row in rows]

    def encode(self, texts: Union[str, Iterable[str]], **options) -> Any:
        """The embeddings of ``texts`` as one float32 numpy array, a row per text; raises
        ``ValueError`` naming the first text that failed."""
        np = _numpy()
        found = self.embed(texts, **options)
        for e in found:
            if e.error is not None:
                raise ValueError(f"text {e.index}: {e.error}")
        return np.stack([e.vector for e in found]) if found else np.zeros((0, 0), np.float32)

    def classify_texts(self, texts: Union[str, Iterable[str]], *, truncate: bool = True) -> List[TextResult]:
        """Classifies texts with a text-classification model."""
        rows = self._native.classify_texts(_texts(texts), truncate=truncate)
        return [TextResult(*row) for row in rows]

    def run(self, inputs: Any) -> List[TensorResult]:
        """Runs a ``tensor`` model: ``inputs`` maps each input name to a numpy array with the
        batch first (one array for a model with one input); one :class:`TensorResult` a row."""
        if _is_array(inputs):
            names = [name for name, _, _ in self.info["inputs"]]
            if len(names) != 1:
                raise TypeError(f"the model takes {len(names)} inputs: give a dict of {names}")
            inputs = {names[0]: inputs}
        if not isinstance(inputs, dict):
            raise TypeError("run takes a dict of input name -> numpy array")
        tensors = [(name, *_wire(array)) for name, array in inputs.items()]
        return [TensorResult(*row) for row in self._native.run_tensors(tensors)]

    def last_run(self) -> Optional[Dict[str, Any]]:
        """What the last call counted: items, failed, model_executions, cache_hits,
        coalesced, wall_s."""
        return self._native.last_run()

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits (at most ``timeout`` seconds) until the answers queued for the Redis tier are
        written, as a worker about to end should; whether they all were."""
        return self._native.flush(timeout)

    def cache_stats(self) -> Optional[Dict[str, int]]:
        """The result cache's counters since loading (``None`` with ``cache=False``)."""
        return self._native.cache_stats()


def _is_array(value: Any) -> bool:
    return type(value).__module__ == "numpy" and type(value).__name__ == "ndarray"


def _texts(texts: Union[str, Iterable[str]]) -> List[str]:
    if isinstance(texts, str):
        return [texts]
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, not str")
    return out


def _image_items(images: Any) -> Tuple[str, list]:
    """("paths", [pattern, ...]) or ("bytes", [(name, bytes), ...])."""
    if isinstance(images, Images):
        return "paths", list(images.patterns)
    if isinstance(images, (str, os.PathLike)):
        return "paths", [os.fspath(images)]
    if isinstance(images, (bytes, bytearray, memoryview)):
        return "bytes", [("bytes 0", bytes(images))]
    try:
        items = list(images)
    except TypeError:
        raise TypeError(
            f"cannot take {type(images).__name__} as images: give process_images(...), "
            "paths, patterns, bytes or a numpy array"
        ) from None
    paths, blobs = [], []
    for i, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            paths.append(os.fspath(item))
        elif isinstance(item, (bytes, bytearray, memoryview)):
            blobs.append((f"bytes {i}", bytes(item)))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], (bytes, bytearray, memoryview)):
            blobs.append((str(item[0]), bytes(item[1])))
        else:
            raise TypeError(f"image {i} is {type(item).__name__}: give paths or bytes")
    if paths and blobs:
        raise TypeError("give images as paths or as bytes, not both in one call")
    return ("bytes", blobs) if blobs else ("paths", paths)


def load_model(model: Optional[PathLike] = None, **options: Any) -> Model:
    """Loads a model (see :class:`Model` for ``options``) and makes it the one
    :func:`compute` uses."""
    global _current
    _current = Model(model, **options)
    return _current


def process_images(*patterns: PathLike) -> Images:
    """Images named by files, folders and glob patterns, taken lazily (see :class:`Images`)."""
    return Images(*patterns)


def compute(inputs: Any, model: Optional[Model] = None) -> list:
    """Answers ``inputs`` with ``model``, else the model :func:`load_model` loaded last, else
    the bundled image classifier."""
    global _current
    if model is None:
        if _current is None:
            _current = Model()
        model = _current
    return model.compute(inputs)


def onnxruntime() -> Tuple[str, Optional[str]]:
    """The ONNX Runtime release the engine loads, and the library's path (``None`` until it
    is fetched)."""
    version, path = _native.onnxruntime()
    return version, None if path is None else os.fspath(path)
