"""Checkpoints: names <-> pytrees with every leaf checked, atomic saves under SIGKILL, keep-last,
and the final model directory (save_model / load_model)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from nanogptx import checkpoint, config, model, provenance, tokenizer

CFG = config.load(None, ["model.n_layer=2", "model.n_head=2", "model.n_embd=16",
                         "model.block_size=8"])  # fmt: skip


def tiny_state() -> dict:
    params = model.init_params(CFG.model, 11, jax.random.key(0))
    opt = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(1e-3, mask=model.decay_mask)
    ).init(params)
    return {"params": params, "opt": opt}


def test_flatten_and_unflatten_round_trip_and_check_every_leaf() -> None:
    state = jax.device_get(tiny_state())
    tensors = checkpoint.flatten(state["params"], "params.") | checkpoint.flatten(
        state["opt"], "opt."
    )
    assert "params.blocks.attn_w" in tensors and "opt.1.0.mu.wte" in tensors
    abstract = jax.eval_shape(tiny_state)
    back = checkpoint.unflatten_like(abstract["opt"], tensors, "opt.")
    assert jax.tree.structure(back) == jax.tree.structure(state["opt"])
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state["opt"]), strict=True):
        assert np.array_equal(a, b)
    bad = dict(tensors, **{"params.wte": np.zeros((12, 16), np.float32)})
    with pytest.raises(checkpoint.CheckpointError, match=r"params.wte is float32\[12, 16\]"):
        checkpoint.unflatten_like(abstract["params"], bad, "params.")
    missing = {k: v for k, v in tensors.items() if k != "params.lnf_b"}
    with pytest.raises(checkpoint.CheckpointError, match="missing.*params.lnf_b"):
        checkpoint.unflatten_like(abstract["params"], missing, "params.")
    extra = dict(tensors, **{"params.extra": np.zeros(1)})
    with pytest.raises(checkpoint.CheckpointError, match="unexpected.*params.extra"):
        checkpoint.unflatten_like(abstract["params"], extra, "params.")


def test_save_keeps_the_last_k_and_ignores_half_written_ones(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        tensors = {"w": np.full((3, 4), step, np.float32), "count": np.array(step, np.int32)}
        checkpoint.save(tmp_path, step, tensors, {"note": step}, {"m.txt": b"hi"}, keep=2)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [20, 30]
    # What a kill in the middle of a save leaves: a temp dir, ignored, then cleaned.
    half = tmp_path / provenance.temp_name("tmpdir", "step_00000040")
    half.mkdir()
    (half / checkpoint.STATE_FILE).write_bytes(b"\x00" * 10)
    assert checkpoint.latest(tmp_path) == tmp_path / "step_00000030"
    tensors, meta = checkpoint.load(checkpoint.latest(tmp_path))
    assert meta["step"] == 30 and meta["note"] == 30 and tensors["w"][0, 0] == 30
    assert (tmp_path / "step_00000030" / "m.txt").read_bytes() == b"hi"
    assert checkpoint.clean(tmp_path) == [half] and not half.exists()


def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_named_with_what_is_wrong(tmp_path: Path) -> None:
    tensors = {"mu": np.linspace(0, 1, 1000, dtype=np.float32)}
    files = {"m.txt": b"x"}
    paths = [checkpoint.save(tmp_path, s, tensors, {"n": s}, files, keep=4) for s in (1, 2, 3, 4)]
    flip_byte(paths[0] / checkpoint.STATE_FILE, -7)  # inside the tensor data: still parses
    (paths[1] / checkpoint.META_FILE).unlink()
    meta = paths[2] / checkpoint.META_FILE
    meta.write_text(meta.read_text().replace('"n": 3', '"n": 30'))
    (paths[3] / "m.txt").write_bytes(b"y")
    for path, what in zip(paths, [
        r"damaged: checkpoint file .*state.safetensors: sha256 is \w+, expected \w+",
        r"damaged: meta.json is missing",
        r"damaged: the content of meta.json does not match its recorded sha256",
        r"damaged: checkpoint file .*m.txt: sha256 is",
    ], strict=True):  # fmt: skip
        with pytest.raises(checkpoint.CheckpointError, match=f"checkpoint {path} is {what}"):
            checkpoint.load(path)
    with pytest.raises(checkpoint.CheckpointError, match="Set train.resume = latest_valid"):
        checkpoint.restore(tmp_path)
    said: list[str] = []
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint"):
        checkpoint.restore(tmp_path, "latest_valid", say=said.append)
    assert [m.split(":")[0] for m in said] == [f"skipping checkpoint {p.name}" for p in paths[::-1]]


SAVER = """
import sys, numpy as np
from nanogptx import checkpoint
root, start = sys.argv[1], int(sys.argv[2])
for step in range(start, start + 10_000):
    tensors = {f"t{i}": np.full((256, 256), step, np.float32) for i in range(8)}
    checkpoint.save(root, step, tensors, {"sum": step * 8 * 256 * 256}, keep=2)
"""


def test_sigkill_at_any_instant_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    start = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path), str(start)])
        deadline = time.time() + 60
        while checkpoint.latest(tmp_path) is None or (
            checkpoint.list_checkpoints(tmp_path)[-1][0] < start + 1
        ):
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        path = checkpoint.latest(tmp_path)
        tensors, meta = checkpoint.load(path)
        step = meta["step"]
        assert all(np.all(t == step) for t in tensors.values()) and len(tensors) == 8
        assert sum(t.sum() for t in tensors.values()) == meta["sum"]
        checkpoint.clean(tmp_path)
        assert not list(tmp_path.glob(".*"))
        start = step + 1


def test_save_model_and_load_model_round_trip(tmp_path: Path) -> None:
    params = jax.device_get(tiny_state()["params"])
    tok = tokenizer.CharTokenizer("abcdefghijk").identity()
    paths = checkpoint.save_model(tmp_path / "m", params, CFG, tok, step=42)
    assert [p.name for p in paths] == ["params.safetensors", "config.toml", "tokenizer.json"]
    loaded, cfg, tok2 = checkpoint.load_model(tmp_path / "m")
    assert cfg.model.vocab_size == 11 and cfg.model.n_embd == 16 and tok2 == tok
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        assert np.array_equal(a, b)
    from safetensors import safe_open

    with safe_open(str(paths[0]), "np") as f:
        assert f.metadata() == {"format": "nanogptx-params/1", "step": "42"}
        assert "blocks.attn_w" in f.keys()  # noqa: SIM118


def test_load_model_refuses_missing_or_mismatched_models(tmp_path: Path) -> None:
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.load_model(tmp_path / "nothing")
    params = jax.device_get(tiny_state()["params"])
    tok = tokenizer.CharTokenizer("abcdefghijk").identity()
    checkpoint.save_model(tmp_path / "m", params, CFG, tok, step=1)
    toml = (tmp_path / "m" / "config.toml").read_text()
    (tmp_path / "m" / "config.toml").write_text(toml.replace("n_embd = 16", "n_embd = 32"))
    with pytest.raises(
        checkpoint.CheckpointError, match=r"attn_b is float32\[2, 48\], expected float32\[2, 96\]"
    ):
        checkpoint.load_model(tmp_path / "m")
    (tmp_path / "m" / "tokenizer.json").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="tokenizer.json is missing"):
        checkpoint.load_model(tmp_path / "m")


@pytest.mark.parametrize("chars", [[97, 98], 5, {"a": 1}, None])
def test_a_tokenizer_json_whose_vocabulary_is_not_text_is_refused_naming_it(
    tmp_path: Path, chars: object
) -> None:
    """sample, eval and export load it first: a list or a number there was an AttributeError
    traceback ('list' object has no attribute 'encode') where the stages print one line."""
    params = jax.device_get(tiny_state()["params"])
    tok = tokenizer.CharTokenizer("abcdefghijk").identity()
    checkpoint.save_model(tmp_path / "m", params, CFG, tok, step=1)
    (tmp_path / "m" / "tokenizer.json").write_text(json.dumps({**tok, "chars": chars}))
    with pytest.raises(checkpoint.CheckpointError, match=r"tokenizer .*tokenizer.json: "):
        checkpoint.load_model(tmp_path / "m")
