"""Shared test set-up: offline tiktoken files, wandb off, and the path to ../shared/assets."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"

# tiktoken caches each file under sha1(URL); a cached file with the right sha256 is used offline.
TIKTOKEN_FILES = {
    "r50k_base.tiktoken": "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4",
    "gpt2_vocab.bpe": "6d1cbeee0f20b3d9449abfede4726ed8212e3aee",
    "gpt2_encoder.json": "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6",
}


def seed_tiktoken_cache(cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    for name, cached in TIKTOKEN_FILES.items():
        if not (cache / cached).exists():
            shutil.copyfile(ASSETS / "tiktoken" / name, cache / cached)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="nanogptx-wandb-"))
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if "TIKTOKEN_CACHE_DIR" not in os.environ and (ASSETS / "tiktoken").is_dir():
        cache = Path(tempfile.mkdtemp(prefix="nanogptx-tiktoken-"))
        seed_tiktoken_cache(cache)
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
