"""Batches from prepared shards: pure in (seed, step), the right windows, hashes checked."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nanogptx import loader, provenance
from prepared import synthetic_text, write_prepared

TEXT = synthetic_text(30_000)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Small shards, so that windows cross shard boundaries.
    return write_prepared(tmp_path_factory.mktemp("data"), TEXT, shard_tokens=1000)


def ids_of(text: str, chars: str) -> np.ndarray:
    return np.array([chars.index(c) for c in text], np.int32)


def test_batch_is_pure_in_seed_and_step_and_reads_the_right_windows(data_dir: Path) -> None:
    data = loader.open_prepared(data_dir)
    chars = data.manifest["tokenizer"]["chars"]
    train_ids = ids_of(TEXT[: int(len(TEXT) * 0.9)], chars)
    spec = loader.BatchSpec("train", seed=7, batch_size=16, block_size=64)
    x, y = loader.batch(data, spec, 3)
    x2, y2 = loader.batch(data, spec, 3)
    assert x.shape == y.shape == (16, 64) and x.dtype == np.int32
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.array_equal(x, loader.batch(data, spec, 4)[0])
    assert not np.array_equal(x, loader.batch(data, replace(spec, seed=8), 3)[0])
    assert not np.array_equal(x, loader.batch(data, replace(spec, stream="eval"), 3)[0])
    starts = loader.window_starts(len(train_ids), spec, 3)
    for row, s in enumerate(starts):
        assert np.array_equal(x[row], train_ids[s : s + 64])
        assert np.array_equal(y[row], train_ids[s + 1 : s + 65])


def test_random_windows_cover_the_split_uniformly_and_stay_inside(data_dir: Path) -> None:
    data = loader.open_prepared(data_dir)
    n = data.split("val").n_tokens
    starts = np.concatenate(
        [loader.window_starts(n, loader.BatchSpec("val", 0, 64, 32), step) for step in range(200)]
    )
    assert starts.min() >= 0 and starts.max() <= n - 32 - 1
    counts, _ = np.histogram(starts, bins=10, range=(0, n - 32))
    assert counts.min() > 0.8 * counts.mean()  # 12800 draws: uniform within a few percent
    # Windows that cross a shard boundary read the concatenated stream.
    stream = data.split("train")
    whole = np.concatenate([np.asarray(s) for s in stream.shards])
    assert np.array_equal(stream.read(990, 30), whole[990:1020])
    assert np.array_equal(stream.read(1995, 2010), whole[1995:4005])


def test_sequential_order_walks_the_split_and_wraps(data_dir: Path) -> None:
    data = loader.open_prepared(data_dir)
    n = data.split("val").n_tokens
    L, B = 100, 4
    n_windows = (n - 1) // L
    spec = loader.BatchSpec("val", 0, B, L, order="sequential")
    seen = np.concatenate([loader.window_starts(n, spec, s) for s in range(n_windows)])
    assert list(seen[:n_windows]) == [w * L for w in range(n_windows)]
    assert list(seen[n_windows : 2 * n_windows]) == [w * L for w in range(n_windows)]


def test_rows_read_only_part_of_the_same_batch(data_dir: Path) -> None:
    data = loader.open_prepared(data_dir)
    spec = loader.BatchSpec("train", seed=1, batch_size=8, block_size=16)
    x, y = loader.batch(data, spec, 5)
    x_part, y_part = loader.batch(data, spec, 5, rows=slice(2, 6))
    assert np.array_equal(x_part, x[2:6]) and np.array_equal(y_part, y[2:6])


def test_device_batch_places_this_process_rows_on_the_mesh(data_dir: Path) -> None:
    data = loader.open_prepared(data_dir)
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = NamedSharding(mesh, P("data", None))
    spec = loader.BatchSpec("train", seed=1, batch_size=8, block_size=16)
    x, y = loader.batch(data, spec, 5)
    assert loader.local_rows(sharding, (8, 16), 0) == slice(0, 8)
    x_arr, y_arr = loader.device_batch(
        sharding, (8, 16), 0, lambda rows: loader.batch(data, spec, 5, rows=rows)
    )
    assert x_arr.sharding == sharding and np.array_equal(np.asarray(x_arr), x)
    assert np.array_equal(np.asarray(y_arr), y)


def test_parquet_shards_give_the_same_batches(tmp_path: Path, data_dir: Path) -> None:
    pq_dir = write_prepared(tmp_path / "pq", TEXT, shard_tokens=1000, shard_format="parquet")
    a, b = loader.open_prepared(data_dir), loader.open_prepared(pq_dir)
    assert a.split("train").n_tokens == b.split("train").n_tokens
    spec = loader.BatchSpec("train", seed=3, batch_size=8, block_size=50)
    for step in range(3):
        assert np.array_equal(loader.batch(a, spec, step)[0], loader.batch(b, spec, step)[0])


def test_a_shard_whose_hash_differs_is_refused(tmp_path: Path) -> None:
    d = write_prepared(tmp_path / "d", TEXT, shard_tokens=5000)
    shard = d / "train_000001.npy"
    expected = json.loads((d / "manifest.json").read_text())["shards"][1]["sha256"]
    tokens = np.load(shard)
    tokens[100] = (tokens[100] + 1) % 10
    np.save(shard, tokens)
    with pytest.raises(provenance.HashMismatch) as e:
        loader.open_prepared(d)
    assert str(shard) in str(e.value) and expected in str(e.value)
    assert provenance.sha256_file(shard) in str(e.value)


def test_missing_or_malformed_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(loader.DataError, match="manifest.json is missing"):
        loader.open_prepared(tmp_path)
    d = write_prepared(tmp_path / "d", TEXT)
    original = (d / "manifest.json").read_bytes()
    manifest = json.loads(original)
    (d / "manifest.json").write_text(json.dumps({**manifest, "format": "other/2"}))
    with pytest.raises(loader.DataError, match="format"):
        loader.open_prepared(d)
    for key, value, says in [
        ("tokens", "8000", r"shards\[0\].tokens is '8000' \(str\), expected a number of tokens"),
        ("file", "../../x.npy", r"shards\[0\].file is '../../x.npy' \(str\), expected a shard"),
        ("sha256", None, r"shards\[0\].sha256 is None \(NoneType\), expected 64 hex"),
    ]:
        bad = {**manifest, "shards": [{**manifest["shards"][0], key: value}]}
        (d / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(loader.DataError, match=says):
            loader.open_prepared(d)
    (d / "manifest.json").write_text(json.dumps({**manifest, "shard_format": "csv"}))
    with pytest.raises(loader.DataError, match=r"shard_format is 'csv' \(str\), expected npy or"):
        loader.open_prepared(d)
    (d / "manifest.json").write_bytes(original)
    (d / "val_000000.npy").unlink()
    with pytest.raises(loader.DataError, match="val_000000.npy.*missing"):
        loader.open_prepared(d)


def test_token_ids_outside_the_vocabulary_are_refused(tmp_path: Path) -> None:
    d = write_prepared(tmp_path / "d", TEXT)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["tokenizer"]["vocab_size"] = 3
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(loader.DataError, match="outside"):  # unchecked: as if prepare wrote it
        loader.batch(loader.open_prepared(d, verify=False), loader.BatchSpec("train", 0, 4, 8), 0)


def test_split_shorter_than_a_window_is_refused(data_dir: Path) -> None:
    data = loader.open_prepared(data_dir)
    n = data.split("val").n_tokens
    with pytest.raises(loader.DataError, match="fewer than block_size"):
        loader.batch(data, loader.BatchSpec("val", 0, 2, n), 0)


@pytest.mark.parametrize("change", ["splits swapped", "vocabulary changed"])
def test_a_manifest_edited_after_prepare_is_refused(tmp_path: Path, change: str) -> None:
    # prepare's provenance.json records the manifest's sha256, which nothing checked: an edited
    # manifest (well formed, its shards intact) was trained on.
    d = write_prepared(tmp_path / "d", TEXT)
    recorded = provenance.sha256_file(d / "manifest.json")
    manifest = json.loads((d / "manifest.json").read_text())
    if change == "splits swapped":
        for shard in manifest["shards"]:
            shard["split"] = {"train": "val", "val": "train"}[shard["split"]]
    else:
        manifest["tokenizer"]["vocab_size"] += 1
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
    says = rf"manifest.json: sha256 is \w+, but {d / 'provenance.json'} records {recorded}"
    with pytest.raises(provenance.HashMismatch, match=says):
        loader.open_prepared(d)
    (d / "provenance.json").unlink()  # no record: not finished by prepare
    with pytest.raises(loader.DataError, match="provenance.json is missing: the prepare stage"):
        loader.open_prepared(d)
