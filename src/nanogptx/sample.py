"""Sample text from a trained model (model.forward_cached) in one compiled loop, into samples.txt
(samples between lines of dashes, as nanoGPT prints them) and provenance.json.

    python -m nanogptx.sample [--config F] [overrides] --model results/RUN/model --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nanogptx import checkpoint, config, model, progress, provenance, runtime, tokenizer
from nanogptx.config import Config, ModelConfig, SampleConfig
from nanogptx.errors import UserError

SEPARATOR = "---------------"


class SampleError(UserError, ValueError):
    """A prompt or setting that sampling cannot use."""


# ---------------------------------------------------------------- the model with a KV cache


def init_cache(cfg: ModelConfig, B: int) -> list[model.Cache]:
    """Keys and values of every layer for block_size positions, zero (unfilled). One pair of
    arrays per layer, batch and heads merged in front of the positions: each step then updates
    them in place and the attention dots read them as they lie (XLA's CPU backend copies or
    transposes a stacked or position-major cache whole on every step, and a batch axis of
    size 1 makes it update the cache twice, on two copies)."""
    shape = (B * model.kv_heads(cfg), cfg.block_size, cfg.n_embd // cfg.n_head)
    return [(jnp.zeros(shape), jnp.zeros(shape)) for _ in range(cfg.n_layer)]


def split_layers(params: model.Params, cfg: ModelConfig) -> list[model.Params]:
    """One dict of parameters per layer, sliced once outside the decoding loop."""
    return [{k: w[i] for k, w in params["blocks"].items()} for i in range(cfg.n_layer)]


# ---------------------------------------------------------------- choosing tokens


def filter_logits(logits_BxV: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Logits divided by the temperature, with tokens outside the top k, and outside the
    smallest set whose probability reaches top_p, set to -inf (ties at the edge are kept)."""
    logits_BxV = logits_BxV.astype(jnp.float32) / temperature
    V = logits_BxV.shape[-1]
    if 0 < top_k < V:
        kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
    if top_p < 1.0:
        sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # mass of better tokens
        # The most likely token is always kept, whatever top_p.
        keep_BxV = (before_BxV < top_p).at[:, 0].set(True)
        cutoff_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
        logits_BxV = jnp.where(logits_BxV < cutoff_Bx1, -jnp.inf, logits_BxV)
    return logits_BxV


# Past block_size, learned positions (GPT-2) are absolute: a token's keys and values change when
# the window slides, so the cache cannot slide with it. nanoGPT re-runs the whole window for
# every token; here, when the window is full, the oldest sample.window_shift tokens (default a
# quarter of the block) are dropped and the rest re-encoded in one pass, then decoding resumes
# from the cache (window_shift = 1: nanoGPT's exact crop, and its cost). Rotary positions
# (model.position = "rope") are relative: the cache slides, a ring of block_size slots, and
# each token attends to the block_size latest. The [sample] section gives prompt, count,
# length, temperature, top-k/p and seed; the model's own config.toml gives the model.


def resolve_shift(cfg: ModelConfig, s: SampleConfig) -> int:
    shift = s.window_shift or max(1, cfg.block_size // 4)
    if shift > cfg.block_size:
        raise SampleError(
            f"sample.window_shift = {s.window_shift} is larger than model.block_size = "
            f"{cfg.block_size}"
        )
    return shift


def context_lengths(P: int, S: int, W: int, shift: int) -> list[int]:
    """How many of the latest tokens each of the S new tokens is predicted from: the prompt's
    P (at most W), then one more per token until the window W is full; then the oldest
    `shift` tokens are dropped and the rest re-encoded at positions 0, 1, ... ."""
    n, out = min(P, W), []
    for _ in range(S):
        out.append(n)
        n = W - shift + 1 if n == W else n + 1
    return out


@functools.partial(jax.jit, static_argnames=("cfg", "rt", "S", "B", "top_k", "top_p", "shift"))
def _generate(
    params: model.Params,
    prompt_P: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    *,
    cfg: ModelConfig,
    rt: runtime.Runtime,
    S: int,
    B: int,
    top_k: int,
    top_p: float,
    shift: int,
) -> jax.Array:
    """The schedule of context_lengths as loops with static trip counts: decode until the
    window is full, then segments of one re-encoding and shift - 1 decodes. (A lax.cond per
    token would make XLA copy the whole cache on every step.)"""
    P, W = prompt_P.shape[0], cfg.block_size
    keep = W - shift + 1  # tokens re-encoded when the window is full
    # At least W long, so that re-encoding traces even when it can never happen.
    tokens_BxU = jnp.zeros((B, max(P + S, W)), jnp.int32).at[:, :P].set(prompt_P)
    # (ids_BxT, pos, cache) -> (logits_BxV, cache); the layers sliced once, outside the loops.
    forward = functools.partial(
        model.forward_cached, params, split_layers(params, cfg), cfg=cfg, rt=rt
    )
    logits_BxV, cache = forward(tokens_BxU[:, :P], 0, init_cache(cfg, B))

    def choose(i: jax.Array, state: tuple) -> tuple:
        """Sample token i from the logits in state; write it into the token buffer."""
        tokens_BxU, cache, _, logits_BxV = state
        logits_BxV = filter_logits(logits_BxV, temperature, top_k, top_p)
        tok_B = jax.random.categorical(jax.random.fold_in(key, i), logits_BxV).astype(jnp.int32)
        return tok_B, jax.lax.dynamic_update_slice(tokens_BxU, tok_B[:, None], (0, P + i)), cache

    def decode(i: jax.Array, state: tuple) -> tuple:
        tok_B, tokens_BxU, cache = choose(i, state)
        logits_BxV, cache = forward(tok_B[:, None], state[2], cache)
        return tokens_BxU, cache, state[2] + 1, logits_BxV

    def reencode(i: jax.Array, state: tuple) -> tuple:
        _, tokens_BxU, cache = choose(i, state)
        ids_BxT = jax.lax.dynamic_slice_in_dim(tokens_BxU, P + i + 1 - keep, keep, axis=1)
        logits_BxV, cache = forward(ids_BxT, 0, cache)
        return tokens_BxU, cache, jnp.int32(keep), logits_BxV

    def segment(first: jax.Array, length: int, state: tuple) -> tuple:
        """Tokens first..first+length-1: one re-encoding, then decodes."""
        state = reencode(first, state)
        return jax.lax.fori_loop(first + 1, first + length, decode, state)

    state = (tokens_BxU, cache, jnp.int32(P), logits_BxV)
    # Decode until the window is full: with rope (its cache slides), every token.
    A = S - 1 if cfg.position == "rope" else min(S - 1, W - P)
    state = jax.lax.fori_loop(0, A, decode, state)
    full, tail = divmod(S - 1 - A, shift)
    state = jax.lax.fori_loop(0, full, lambda j, state: segment(A + j * shift, shift, state), state)
    if tail:
        state = segment(A + full * shift, tail, state)
    tokens_BxU = choose(S - 1, state)[1]
    return tokens_BxU[:, P : P + S]


def generate_args(
    params: model.Params,
    prompt_P: jax.Array,
    cfg: ModelConfig,
    s: SampleConfig,
    rt: runtime.Runtime,
) -> tuple[tuple, dict[str, Any]]:
    """The arguments and static settings of the compiled loop (_generate) for a checked prompt:
    the one place they are made, for generate, compile_generate and nanogptx.plan (which passes
    shapes)."""
    args = (params, prompt_P, jax.random.key(s.seed), jnp.float32(s.temperature))
    static = {"cfg": cfg, "rt": rt, "S": s.max_new_tokens, "B": s.num_samples}
    return args, static | {"top_k": s.top_k, "top_p": s.top_p, "shift": resolve_shift(cfg, s)}


def _arguments(
    params: model.Params,
    prompt: list[int] | np.ndarray,
    cfg: ModelConfig,
    s: SampleConfig,
    rt: runtime.Runtime,
) -> tuple[tuple, dict[str, Any]]:
    """generate_args of a prompt, checked; a prompt longer than block_size is cropped to its
    last block_size tokens, as nanoGPT does."""
    prompt_P = np.asarray(prompt, np.int32)[-cfg.block_size :]
    if prompt_P.size == 0:
        raise SampleError("the prompt is empty: give at least one token (sample.start)")
    V = params["wte"].shape[0]
    if prompt_P.min() < 0 or prompt_P.max() >= V:
        raise SampleError(f"prompt token ids must lie in [0, {V})")
    return generate_args(params, jnp.asarray(prompt_P), cfg, s, rt)


def generate(
    params: model.Params,
    prompt: list[int] | np.ndarray,
    cfg: ModelConfig,
    s: SampleConfig,
    rt: runtime.Runtime = model.DEFAULT,
) -> np.ndarray:
    """s.num_samples continuations of s.max_new_tokens tokens each, as one batch. A prompt
    longer than block_size is cropped to its last block_size tokens, as nanoGPT does."""
    args, static = _arguments(params, prompt, cfg, s, rt)
    return np.asarray(_generate(*args, **static))


def compile_generate(
    params: model.Params,
    prompt: list[int] | np.ndarray,
    cfg: ModelConfig,
    s: SampleConfig,
    rt: runtime.Runtime = model.DEFAULT,
) -> Callable[[], np.ndarray]:
    """What `generate` runs, compiled (the long part of a short sampling run, so the stage can
    say which it is in): call the result to generate."""
    args, static = _arguments(params, prompt, cfg, s, rt)
    compiled = _generate.lower(*args, **static).compile()
    return lambda: np.asarray(compiled(*args))


# ---------------------------------------------------------------- the stage


def read_prompt(start: str) -> str:
    """sample.start, or the text of the file it names as FILE:path."""
    if not start.startswith("FILE:"):
        return start
    path = Path(start[len("FILE:") :])
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SampleError(f"sample.start = {start!r}: cannot read the prompt file: {e}") from None


def encode_prompt(tok: tokenizer.Tokenizer, start: str) -> list[int]:
    """The token ids of sample.start (read_prompt); empty, with an end-of-text token (GPT-2),
    that token: an empty prompt starts a new document."""
    try:
        prompt = tok.encode(read_prompt(start))
    except tokenizer.TokenizerError as e:
        raise SampleError(f"sample.start: {e}") from None
    return [tok.eot_token] if not prompt and tok.eot_token is not None else prompt


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)  # stdout is the samples'


def sample(
    cfg: Config, model_dir: Path, out_dir: Path, channel: progress.Channel | None = None
) -> list[str]:
    """Load the model in model_dir, write samples.txt and provenance.json into out_dir (held for
    the while: a second sampling into it is refused; an interrupted one's leftovers go).
    channel: progress lines for a person watching (the workflow's terminal)."""
    start = cfg.sample.start
    prompt = start.removeprefix("FILE:") if start.startswith("FILE:") else None
    inputs = [("--model", model_dir), ("the prompt file of sample.start", prompt)]
    with provenance.exclusive(out_dir, "sampling", inputs=inputs, stage="sample"):
        return _sample(cfg, Path(model_dir), Path(out_dir), channel)


def generate_said(
    params: model.Params,
    prompt: list[int],
    cfg: ModelConfig,
    s: SampleConfig,
    rt: runtime.Runtime,
    channel: progress.Channel | None,
) -> tuple[np.ndarray, float]:
    """generate, compiling then generating, each said on the channel and the log; and the
    seconds it generated for."""
    with progress.busy("compiling the generation loop", channel, log):
        run = compile_generate(params, prompt, cfg, s, rt)
    what = (
        f"generating {progress.plural(s.num_samples, 'sample')} of "
        f"{progress.plural(s.max_new_tokens, 'token')} after a prompt of "
        f"{progress.plural(len(prompt), 'token')}"
    )
    t0 = time.perf_counter()
    with progress.busy(what, channel, log):
        new_BxS = run()
    return new_BxS, time.perf_counter() - t0


def _sample(
    cfg: Config, model_dir: Path, out_dir: Path, channel: progress.Channel | None
) -> list[str]:
    runtime.keep_freed_memory(cfg.tokenizer.name)
    # The model is described by its own config.toml (recorded below as model_config).
    record = provenance.Record.start(
        "sample", config.sections(cfg, config.STAGE_SECTIONS["sample"])
    )
    s = cfg.sample
    params, mcfg, tok_dict = checkpoint.load_model(model_dir)
    model_sha = checkpoint.check_model_hash(model_dir)
    tok = tokenizer.from_manifest(tok_dict)
    prompt = encode_prompt(tok, s.start)
    params = jax.tree.map(jnp.asarray, params)
    if tok.vocab_size < mcfg.model.vocab_size:  # rows the tokenizer cannot decode: masked
        mcfg = dataclasses.replace(
            mcfg, model=dataclasses.replace(mcfg.model, vocab_size=tok.vocab_size)
        )
    rt = runtime.choose_for(mcfg.model, jax.local_devices()[0])
    log(f"sample: runtime {rt.describe()}")
    new_BxS, seconds = generate_said(params, prompt, mcfg.model, s, rt, channel)
    samples = [tok.decode(list(prompt) + row.tolist()) for row in new_BxS]

    path = out_dir / "samples.txt"
    text = "".join(f"{t}\n{SEPARATOR}\n" for t in samples)
    # A vocabulary from before prepare refused lone surrogates may still produce one: written
    # as \udXXX rather than failing after the whole generation.
    provenance.write_bytes_atomic(path, text.encode("utf-8", "backslashreplace"))
    record.finish(
        out_dir,
        inputs=[
            provenance.file_entry(model_dir / name, model_sha if i == 0 else None)
            for i, name in enumerate(checkpoint.MODEL_FILES)
        ],
        outputs=[provenance.file_entry(path)],
        extra={
            "model_sha256": model_sha,
            "model_config": config.to_dict(mcfg.model),
            "runtime": rt.describe(),
            "settings": {
                **config.to_dict(s),
                "prompt_tokens": len(prompt),
                "window_shift_used": (
                    None if mcfg.model.position == "rope" else resolve_shift(mcfg.model, s)
                ),
            },
            "seconds": round(seconds, 3),
            "tokens_per_second": round(s.num_samples * s.max_new_tokens / seconds, 1),
        },
    )
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nanogptx.sample", description=__doc__.split("\n\n")[0]
    )
    # The run's whole config file is accepted; only its [sample] section is used here.
    config.add_arguments(parser, config.STAGE_SECTIONS["sample"])
    parser.add_argument("--model", type=Path, required=True, help="trained model directory")
    parser.add_argument("--out", type=Path, required=True, help="directory for samples.txt")
    progress.add_arguments(parser, "sample")
    args = parser.parse_intermixed_args(argv)
    cfg = config.from_args(args, parser, registry=False)  # the data is not read here
    try:
        samples = sample(cfg, args.model, args.out, progress.from_args(args))
    except (UserError, OSError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        sys.exit(1)
    sys.stdout.reconfigure(errors="backslashreplace")
    for text in samples:
        print(text, SEPARATOR, sep="\n")


if __name__ == "__main__":
    main()
