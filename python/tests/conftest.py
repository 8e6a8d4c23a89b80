"""Fixtures for the Python package's tests: the repository's files, the CLI the answers are
compared with, and a fresh result cache per test."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli_binary() -> Path:
    """The `singlepoint` CLI built from this checkout (scripts/test builds it first)."""
    given = os.environ.get("SINGLEPOINT_BIN")
    if given:
        return Path(given)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for profile in ("debug", "release"):
        path = target / profile / "singlepoint"
        if path.is_file():
            return path
    raise RuntimeError(f"no singlepoint binary under {target}: run `cargo build` (or set SINGLEPOINT_BIN)")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def cli():
    binary = cli_binary()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(binary), *args], capture_output=True, text=True, cwd=ROOT, check=False)

    return run


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def jsonl(text: str) -> list:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
