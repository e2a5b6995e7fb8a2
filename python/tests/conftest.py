"""Shared setup of the Python tests: one torch thread (PyTorch's OpenMP threads stall badly when
the 2 cores are shared; results do not depend on it), the repository's paths."""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

torch.set_num_threads(1)

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return Path(os.environ.get("DELTADIT_TEST_DATA", tiny.REPO / "tests" / "data"))


@pytest.fixture(scope="session")
def cli() -> Path:
    if not tiny.CLI.is_file():
        pytest.fail(f"{tiny.CLI} not found: build it with `cargo build --release` (scripts/test-python.sh does)")
    return tiny.CLI
