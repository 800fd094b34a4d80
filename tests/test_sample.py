"""Sampling: the KV-cache loop against full recomputation, past block_size too; seeds, top-k,
top-p, batches; the stage's files; clear errors for a missing or incompatible model or prompt."""

from __future__ import annotations

import dataclasses
import functools
import html
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanogptx import checkpoint, config, model, provenance, sample, tokenizer
from nanogptx.config import ModelConfig, SampleConfig
from variants import VARIANTS, every_variant

V, W = 30, 16
CFG = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=W, vocab_size=V, bias=True)
forward = jax.jit(model.forward, static_argnames=("cfg",))


def last_logits(params: model.Params, context: list[int]) -> np.ndarray:
    """Logits after the context (at most W tokens) from the full forward pass; padded on the
    right to W, which causal attention hides, so one compiled program serves all lengths."""
    ids = np.zeros((1, W), np.int32)
    ids[0, : len(context)] = context
    return np.asarray(forward(params, jnp.asarray(ids), CFG))[0, len(context) - 1]


@pytest.fixture(scope="module")
def params() -> model.Params:
    # Random weights scaled up: outputs that depend strongly on the context and clear argmax
    # margins, so greedy decoding is a sharp test (a fresh init predicts nearly uniformly).
    p = model.init_params(CFG, V, jax.random.key(0))
    return jax.tree.map(lambda a: a * 25.0 if a.ndim >= 2 else a, p)


def reference(
    params: model.Params, prompt: list[int], S: int, shift: int, pick: str = "argmax"
) -> tuple[list[int], list[np.ndarray]]:
    """Greedy tokens from a full forward pass over each token's context (no cache), and the
    logits each was chosen from."""
    seq, logits = list(prompt), []
    for n in sample.context_lengths(len(prompt), S, W, shift):
        row = last_logits(params, seq[-n:])
        logits.append(row)
        seq.append(int(row.argmax()))
    return seq[len(prompt) :], logits


def greedy(**changes: object) -> SampleConfig:
    return SampleConfig(**{"num_samples": 2, "max_new_tokens": 40, "top_k": 1, **changes})


def test_context_lengths_follow_the_window_rule() -> None:
    # shift 1 is nanoGPT's crop: the last min(length, W) tokens.
    assert sample.context_lengths(3, 20, 16, 1) == [min(3 + i, 16) for i in range(20)]
    # shift 4: fill to 16, then drop 4 and re-encode 13, grow to 16 again, ...
    assert sample.context_lengths(14, 10, 16, 4) == [14, 15, 16, 13, 14, 15, 16, 13, 14, 15]
    assert sample.context_lengths(40, 2, 16, 4) == [16, 13]  # a long prompt is cropped


def test_cached_forward_matches_forward(params: model.Params) -> None:
    ids = jax.random.randint(jax.random.key(1), (3, 9), 0, V)
    full = forward(params, ids, CFG)
    layers = sample.split_layers(params, CFG)
    cached = jax.jit(model.forward_cached, static_argnames=("cfg", "rt"))
    logits, cache = cached(params, layers, ids[:, :8], 0, sample.init_cache(CFG, 3), cfg=CFG)
    np.testing.assert_allclose(logits, full[:, 7], rtol=1e-4, atol=1e-3)
    logits, _ = cached(params, layers, ids[:, 8:], 8, cache, cfg=CFG)
    np.testing.assert_allclose(logits, full[:, 8], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("shift", [1, 0])  # 5: in the test of every variant
def test_kv_cache_greedy_equals_full_recompute(params: model.Params, shift: int) -> None:
    prompt = [1, 2, 3]
    s = greedy(window_shift=shift)
    used = sample.resolve_shift(CFG, s)
    want, logits = reference(params, prompt, s.max_new_tokens, used)
    margins = [np.sort(row)[-1] - np.sort(row)[-2] for row in logits]
    assert min(margins) > 1e-3  # otherwise float rounding could decide a tie: test ill-posed
    assert len(set(want)) > 5  # not a degenerate repetition
    got = sample.generate(params, prompt, CFG, s)
    assert got.shape == (2, 40)
    for row in got:  # 40 new tokens from a 3-token prompt run well past block_size 16
        assert row.tolist() == want


@functools.lru_cache
def sharp_params(name: str) -> tuple[ModelConfig, model.Params]:
    cfg = dataclasses.replace(CFG, **VARIANTS[name])
    p = model.init_params(cfg, V, jax.random.key(0))
    return cfg, jax.tree.map(lambda a: a * 25.0 if a.ndim >= 2 else a, p)


@pytest.mark.parametrize("name", [n for n in every_variant() if n != "gpt2"])  # gpt2: above
def test_every_variant_generates_with_its_cache_as_by_recomputation(name: str) -> None:
    # Greedy decoding token for token, 40 tokens from a 3-token prompt: well past block_size 16.
    # Learned positions: the re-encoding schedule of the window; rope: the cache slides, which
    # is the full forward pass over the whole sequence, each position attending block_size back.
    cfg, p = sharp_params(name)
    prompt, s = [1, 2, 3], greedy(window_shift=5)
    seq, margins = list(prompt), []
    full = jax.jit(model.forward, static_argnames=("cfg",))
    if cfg.position == "rope":
        U = len(prompt) + s.max_new_tokens  # padded on the right: causal attention hides it
        for _ in range(s.max_new_tokens):
            ids = np.zeros((1, U), np.int32)
            ids[0, : len(seq)] = seq
            row = np.asarray(full(p, jnp.asarray(ids), cfg))[0, len(seq) - 1]
            margins.append(np.diff(np.sort(row)[-2:])[0])
            seq.append(int(row.argmax()))
    else:
        for n in sample.context_lengths(len(prompt), s.max_new_tokens, W, 5):
            ids = np.zeros((1, W), np.int32)
            ids[0, :n] = seq[-n:]
            row = np.asarray(full(p, jnp.asarray(ids), cfg))[0, n - 1]
            margins.append(np.diff(np.sort(row)[-2:])[0])
            seq.append(int(row.argmax()))
    assert min(margins) > 1e-3 and len(set(seq)) > 5  # a sharp test, not a repetition
    got = sample.generate(p, prompt, cfg, s)
    for row in got:
        assert row.tolist() == seq[len(prompt) :]
    if cfg.n_kv_head:  # the cache holds the key/value heads only
        K = cfg.n_embd // cfg.n_head
        assert sample.init_cache(cfg, 2)[0][0].shape == (2 * cfg.n_kv_head, W, K)


def test_window_shift_one_is_nanogpts_crop(params: model.Params) -> None:
    prompt, s = [1, 2, 3], greedy(window_shift=1)
    seq = list(prompt)
    for _ in range(s.max_new_tokens):  # nanoGPT: idx_cond = idx[:, -block_size:]
        seq.append(int(last_logits(params, seq[-W:]).argmax()))
    got = sample.generate(params, prompt, CFG, s)
    assert got[0].tolist() == seq[len(prompt) :]


def test_long_prompt_is_cropped_to_block_size(params: model.Params) -> None:
    prompt = list(range(20))  # longer than block_size 16
    s = greedy(max_new_tokens=5)
    got = sample.generate(params, prompt, CFG, s)
    np.testing.assert_array_equal(got, sample.generate(params, prompt[-W:], CFG, s))


def test_seeds_reproducible_and_distinct(params: model.Params) -> None:
    s = SampleConfig(num_samples=3, max_new_tokens=30, temperature=1.0, top_k=0, seed=7)
    a = sample.generate(params, [1], CFG, s)
    np.testing.assert_array_equal(a, sample.generate(params, [1], CFG, s))
    b = sample.generate(params, [1], CFG, dataclasses.replace(s, seed=8))
    assert not np.array_equal(a, b)
    # A batch of samples: rows differ from each other.
    assert len({tuple(r) for r in a.tolist()}) == 3


def test_top_k_and_top_p_restrict_the_support(params: model.Params) -> None:
    top_k, top_p = 4, 0.6  # both filters at once: each token must pass both
    s = SampleConfig(num_samples=4, max_new_tokens=20, temperature=1.5, top_k=top_k, top_p=top_p)
    got = sample.generate(params, [1, 2], CFG, s)
    lengths = sample.context_lengths(2, s.max_new_tokens, W, sample.resolve_shift(CFG, s))
    for row in got.tolist():
        seq = [1, 2, *row]
        for i, n in enumerate(lengths):
            end = 2 + i
            logits = last_logits(params, seq[end - n : end])
            allowed = np.isfinite(
                np.asarray(sample.filter_logits(jnp.asarray(logits[None]), 1.5, top_k, top_p))[0]
            )
            assert allowed[row[i]], (i, row[i])
    # The filter itself: exactly k kept; the top-p set is the smallest reaching p.
    logits = jnp.log(jnp.asarray([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    assert int(jnp.isfinite(sample.filter_logits(logits, 1.0, 3, 1.0)).sum()) == 3
    kept = np.isfinite(np.asarray(sample.filter_logits(logits, 1.0, 0, 0.6)))[0]
    assert kept.tolist() == [True, True, False, False, False]
    kept = np.isfinite(np.asarray(sample.filter_logits(logits, 1.0, 0, 0.3)))[0]
    assert kept.tolist() == [True, False, False, False, False]


# ---------------------------------------------------------------- the stage


CHARS = "\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def save_char_model(path: Path, mcfg: ModelConfig | None = None) -> Path:
    tok = tokenizer.CharTokenizer(CHARS)
    mcfg = mcfg or dataclasses.replace(CFG, vocab_size=tok.vocab_size)
    cfg = config.Config(model=mcfg)
    params = model.init_params(mcfg, tok.vocab_size, jax.random.key(0))
    checkpoint.save_model(path, params, cfg, tok.identity(), step=10)
    return path


def test_stage_writes_samples_and_provenance(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_dir = save_char_model(tmp_path / "model")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("ROMEO:\n")
    out = tmp_path / "samples"
    sample.main([
        "--model", str(model_dir), "--out", str(out), f"sample.start='FILE:{prompt}'",
        "sample.num_samples=3", "sample.max_new_tokens=40", "sample.seed=3",
    ])  # fmt: skip
    text = (out / "samples.txt").read_text()
    parts = text.split(f"\n{sample.SEPARATOR}\n")
    assert len(parts) == 4 and parts[-1] == ""
    for part in parts[:3]:
        assert part.startswith("ROMEO:\n") and len(part) == len("ROMEO:\n") + 40
    record = provenance.read(out)
    sha = provenance.sha256_file(model_dir / "params.safetensors")
    assert record["stage"] == "sample" and record["model_sha256"] == sha
    assert record["settings"]["num_samples"] == 3 and record["settings"]["seed"] == 3
    assert record["outputs"][0]["sha256"] == provenance.sha256_file(out / "samples.txt")
    # How it ran on this CPU, logged and recorded: the fast primitives, every layer unrolled.
    N = checkpoint.load_model(model_dir)[1].model.n_layer
    assert record["runtime"] == {"kernels": "fast", "attention": "einsum", "unroll": N,
                                 "loss_chunk": 1 << 23, "remat": "none"}  # fmt: skip
    captured = capsys.readouterr()
    assert f"sample: runtime {record['runtime']}" in captured.err
    assert captured.out.count(sample.SEPARATOR) == 3
    # Same settings, same samples.
    sample.main(["--model", str(model_dir), "--out", str(tmp_path / "again"),
                 f"sample.start='FILE:{prompt}'", "sample.num_samples=3",
                 "sample.max_new_tokens=40", "sample.seed=3"])  # fmt: skip
    assert (tmp_path / "again" / "samples.txt").read_text() == text


def test_a_prompt_and_names_outside_the_bmp_round_trip_through_every_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # A model in a directory with spaces and an emoji, whose config holds a prompt and a run
    # name outside the Basic Multilingual Plane, with a combining accent, quotes, a backslash,
    # a tab and newlines; its config.toml once was not TOML, so no stage could load the model.
    prompt = 'ROMEO 😀: e\u0301 "q" \\n\tx\n'
    tok = tokenizer.CharTokenizer("".join(sorted(set(CHARS + '😀\u0301"\\\t'))))
    mcfg = dataclasses.replace(CFG, vocab_size=tok.vocab_size)
    cfg = config.load(None, [f"sample.start={config._toml_value(prompt)}",
                             f"logging.wandb_run_name={config._toml_value(prompt)}"])  # fmt: skip
    cfg = dataclasses.replace(cfg, model=mcfg)
    params = model.init_params(mcfg, tok.vocab_size, jax.random.key(0))
    model_dir = tmp_path / "my models 😀" / "m"
    checkpoint.save_model(model_dir, params, cfg, tok.identity(), step=1)
    saved = checkpoint.load_model(model_dir)[1]
    assert saved.sample.start == prompt and saved.logging.wandb_run_name == prompt
    # The prompt given on the command line and as a FILE: under a path with spaces.
    (tmp_path / "my prompts 😀").mkdir()
    (tmp_path / "my prompts 😀" / "p.txt").write_bytes(prompt.encode())
    for i, start in enumerate([prompt, f"FILE:{tmp_path}/my prompts 😀/p.txt"]):
        out = tmp_path / f"samples {i} 😀"
        args = [f"sample.start={config._toml_value(start)}", "sample.max_new_tokens=5"]
        sample.main(["--model", str(model_dir), "--out", str(out), "sample.num_samples=1", *args])
        assert (out / "samples.txt").read_bytes().startswith(prompt.encode())
        assert provenance.read(out)["settings"]["start"] == start
    assert capsys.readouterr().out.startswith(prompt)
    # The report's pages of the samples and of the model's config, made where the locale's
    # encoding is ASCII: the files are UTF-8 whatever the locale.
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    for name, text in (("samples 0 😀/samples.txt", prompt), ("my models 😀/m/config.toml",
                       config._toml_value(prompt))):  # fmt: skip
        page = tmp_path / "page.html"
        subprocess.run([sys.executable, "-m", "nanogptx.report", "text", "--out", str(page),
                        str(tmp_path / name)], env=env, check=True)  # fmt: skip
        assert html.escape(text) in page.read_text("utf-8"), name


def test_a_lone_surrogate_in_an_old_vocabulary_never_crashes_the_output(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # prepare now refuses (or replaces) lone surrogates; a model made before that may hold one.
    tok = tokenizer.CharTokenizer("ab\ud800")
    mcfg = dataclasses.replace(CFG, vocab_size=tok.vocab_size)
    params = model.init_params(mcfg, tok.vocab_size, jax.random.key(0))
    checkpoint.save_model(tmp_path / "m", params, config.Config(model=mcfg), tok.identity(), 1)
    args = ["sample.start='a'", "sample.num_samples=1", "sample.max_new_tokens=60"]
    sample.main(["--model", str(tmp_path / "m"), "--out", str(tmp_path / "s"), *args])
    text = (tmp_path / "s" / "samples.txt").read_text()
    assert "\\ud800" in text and "\\ud800" in capsys.readouterr().out


def run_main(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as e:
        sample.main(argv)
    assert e.value.code == 1
    return capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = run_main(["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys)
    assert "nope" in err and "does not exist" in err
    assert not (tmp_path / "o" / "samples.txt").exists()


def test_incompatible_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_dir = save_char_model(tmp_path / "model")
    # A config.toml that no longer matches the saved parameters (wider model).
    toml = (model_dir / "config.toml").read_text().replace("n_embd = 32", "n_embd = 64")
    (model_dir / "config.toml").write_text(toml)
    err = run_main(["--model", str(model_dir), "--out", str(tmp_path / "o")], capsys)
    assert "wte" in err or "expected" in err
    assert "params.safetensors" in err
    assert not (tmp_path / "o" / "samples.txt").exists()


def test_prompt_outside_char_vocabulary_names_the_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model_dir = save_char_model(tmp_path / "model")
    err = run_main(
        ["--model", str(model_dir), "--out", str(tmp_path / "o"), "sample.start='Wie geht’s? ß'"],
        capsys,
    )
    assert "sample.start" in err and "’" in err and "ß" in err
    err = run_main(
        ["--model", str(model_dir), "--out", str(tmp_path / "o"),
         f"sample.start='FILE:{tmp_path / 'missing.txt'}'"],
        capsys,
    )  # fmt: skip
    assert "missing.txt" in err


def test_changed_model_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_dir = save_char_model(tmp_path / "model")
    params = model_dir / "params.safetensors"
    provenance.write_json_atomic(
        model_dir / "provenance.json",
        {"stage": "train", "outputs": [{"path": str(params), "sha256": "0" * 64}]},
    )
    err = run_main(["--model", str(model_dir), "--out", str(tmp_path / "o")], capsys)
    assert "sha256" in err and "params.safetensors" in err


def test_window_shift_larger_than_block_is_refused(params: model.Params) -> None:
    with pytest.raises(sample.SampleError, match="window_shift"):
        sample.generate(params, [1], CFG, greedy(window_shift=W + 1))


def test_help_lists_the_sample_keys(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        sample.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "sample.window_shift" in out and "sample.top_p" in out and "--model" in out
