"""Shared test set-up: offline tiktoken files, wandb off, and the path to ../shared/assets."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from nanogptx import tokenizer

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="nanogptx-wandb-"))
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # Quicker compiles for the many small programs of the tests, here and in every stage, job
    # and process they start (they inherit it): LLVM at -O0. XLA does not let LLVM reorder float
    # operations (no fast math), so the results are the same bits; about 2x faster test_model.
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
    if "TIKTOKEN_CACHE_DIR" not in os.environ and (ASSETS / "tiktoken").is_dir():
        cache = Path(tempfile.mkdtemp(prefix="nanogptx-tiktoken-"))
        tokenizer.seed_tiktoken_cache(ASSETS / "tiktoken", cache)
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)


@pytest.fixture(scope="session")
def assets() -> Path:
    """../shared/assets, or a skip that says why."""
    if not (ASSETS / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip(f"offline assets not found at {ASSETS} (they come with ../shared)")
    return ASSETS


@pytest.fixture(scope="session")
def gpt2_offline(assets: Path) -> None:
    """tiktoken's GPT-2 files are available without network (seeded from the assets)."""
    if not (assets / "tiktoken").is_dir():
        pytest.skip(f"tiktoken files not found at {assets / 'tiktoken'}")
