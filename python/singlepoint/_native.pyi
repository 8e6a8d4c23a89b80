"""Type stubs of the native module (python/src/lib.rs). Use the ``singlepoint`` package's API;
these are the calls it is built on."""

from typing import Any, Dict, List, Optional, Tuple

__version__: str

ClassRow = Tuple[int, str, str, Optional[str], List[Tuple[str, float]], Optional[str]]
Output = Tuple[str, str, List[int], bytes]
TensorRow = Tuple[int, str, Optional[List[Output]], Optional[str]]
EmbedRow = Tuple[int, str, Optional[bytes], int, int, Optional[str]]
TextClassRow = Tuple[int, str, Optional[str], List[Tuple[str, float]], int, int, Optional[str]]
Box = Tuple[float, float, float, float]
DetectRow = Tuple[
    int, str, str, Optional[Tuple[int, float]], List[Tuple[str, int, float, Box]], Optional[str]
]

class NativeModel:
    def __init__(
        self,
        model: Optional[str] = None,
        *,
        backend: str = "auto",
        threads: Optional[int] = None,
        instances: Optional[int] = None,
        batch_size: Optional[int] = None,
        top_k: int = 5,
        max_pixels: Optional[int] = None,
        cache: bool = True,
        cache_dir: Optional[str] = None,
        cache_mem: str = "256MiB",
        cache_disk: str = "2GiB",
        cache_ttl: Optional[float] = None,
        cache_redis: Optional[str] = None,
        cache_redis_namespace: str = "singlepoint",
        cache_redis_timeout_ms: int = 5,
        cache_redis_pool: int = 8,
        fetch: bool = True,
    ) -> None: ...
    def warnings(self) -> List[str]: ...
    def info(self) -> Dict[str, Any]: ...
    def classify_paths(self, inputs: List[str]) -> List[ClassRow]: ...
    def classify_bytes(self, items: List[Tuple[str, bytes]]) -> List[ClassRow]: ...
    def classify_tensor(self, datatype: str, shape: List[int], data: bytes) -> List[ClassRow]: ...
    def run_tensors(self, tensors: List[Tuple[str, str, List[int], bytes]]) -> List[TensorRow]: ...
    def embed(
        self, texts: List[str], truncate: bool = True, normalize: Optional[bool] = None
    ) -> List[EmbedRow]: ...
    def classify_texts(self, texts: List[str], truncate: bool = True) -> List[TextClassRow]: ...
    def detect_paths(
        self,
        inputs: List[str],
        score: Optional[float] = None,
        iou: Optional[float] = None,
        max_detections: Optional[int] = None,
        classes: Optional[List[str]] = None,
        fps: Optional[float] = None,
    ) -> List[DetectRow]: ...
    def last_run(self) -> Optional[Dict[str, Any]]: ...
    def flush(self, timeout: float = 10.0) -> bool: ...
    def cache_stats(self) -> Optional[Dict[str, int]]: ...

def onnxruntime() -> Tuple[str, Optional[str]]: ...
def expand_inputs(patterns: List[str]) -> List[str]: ...
