"""lm-evaluation-harness on a trained model directory: the harness model "nanogptx" (log-likelihood,
rolling log-likelihood and greedy generation, batched over all local devices, in JAX, with the
model of model.py and the tokenizer the model was trained with). Needs the harness extra.

    python -m nanogptx.harness --model nanogptx --model_args model=results/RUN/model \
        --tasks hellaswag,lambada_openai,piqa --batch_size 64 [any other lm_eval argument]
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from nanogptx import checkpoint, kernels, model, runtime, tokenizer
from nanogptx.config import ModelConfig
from nanogptx.errors import UserError

try:
    # The built-in models first: lm-eval 0.4.13's get_model imports them only into an empty
    # registry, so registering ours before them would hide them.
    import lm_eval.models  # noqa: F401
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import (
        handle_stop_sequences,
        normalize_gen_kwargs,
        postprocess_generated_text,
    )
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as err:
    raise ImportError(
        f"nanogptx.harness needs lm-evaluation-harness (the harness extra: "
        f"pip install -e '.[harness]'): {err}"
    ) from err

BUCKET = 32  # rows are padded up to a multiple of this (one compiled shape each)


class HarnessError(UserError, ValueError):
    """A request or setting this model cannot serve."""


def bucket(n: int, most: int) -> int:
    return min(-(-n // BUCKET) * BUCKET, most)


def whole(value: Any, default: int) -> int | None:
    """A model_args number (the command line gives strings) as an int; None: not one."""
    if value is None or value == "":
        return default
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def gen_toks(value: Any) -> int:
    """max_gen_toks, of model_args or of a request: a whole number >= 0 (a negative one gave
    every generation empty, silently)."""
    n = whole(value, 256)
    if n is None or n < 0:
        raise HarnessError(f"max_gen_toks = {value!r}: give a whole number >= 0 (e.g. 256)")
    return n


# ---------------------------------------------------------------- the compiled programs


def target_logprobs(
    params: model.Params, x_BxExD: jax.Array, target_BxE: jax.Array, m: ModelConfig, rt: Any
) -> tuple[jax.Array, jax.Array]:
    """Log-probability of each target, and whether it is the likeliest token (ties: the first,
    as argmax), from the residual stream; the head over chunks of positions as the loss's
    (never the whole logits of every position at once)."""
    B, E, D = x_BxExD.shape
    x_TxD = model.final_norm(params, x_BxExD, m, rt).reshape(B * E, D)
    w_VxD, head = model.head_weights(params), model.head_spec(m, rt)
    C, _ = kernels.chunks(B * E, w_VxD.shape[0], head.chunk)

    def one(xs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        x_D, t = xs
        logits_V = kernels.logits(x_D, w_VxD, head)
        return logits_V[t] - jax.nn.logsumexp(logits_V), jnp.argmax(logits_V) == t

    logp_T, best_T = jax.lax.map(one, (x_TxD, target_BxE.reshape(B * E)), batch_size=C)
    return logp_T.reshape(B, E), best_T.reshape(B, E)


def make_scorer(m: ModelConfig, rt: Any) -> Any:
    """jit of (params, ids_BxW, at_BxE, weights_BxE) -> per row (the summed log-probability of
    the tokens at + 1 after tokens ..at, whether each of them is the greedy choice), over the E
    positions `at` of each row (weight 0: not scored)."""

    def score(params: Any, ids_BxW: jax.Array, at_BxE: jax.Array, w_BxE: jax.Array) -> tuple:
        x_BxLxD, _ = model.trunk(params, ids_BxW[:, :-1], m, rt=rt)  # the last: a target only
        x_BxExD = jnp.take_along_axis(x_BxLxD, at_BxE[..., None], axis=1)
        target_BxE = jnp.take_along_axis(ids_BxW, at_BxE + 1, axis=1)
        logp_BxE, best_BxE = target_logprobs(params, x_BxExD, target_BxE, m, rt)
        return (logp_BxE * w_BxE).sum(axis=1), (best_BxE | (w_BxE == 0)).all(axis=1)

    return jax.jit(score)


def make_next_token(m: ModelConfig, rt: Any) -> Any:
    """jit of (params, ids_BxW, at_B) -> the likeliest token after ids ..at of each row: rows of
    any prompt length in one batch, right-padded (causal attention never looks past at). The
    whole window is recomputed per token (learned positions would need a cache position per
    row); sample.py's cached loop serves one prompt at a time."""

    def next_token(params: Any, ids_BxW: jax.Array, at_B: jax.Array) -> jax.Array:
        x_BxWxD, _ = model.trunk(params, ids_BxW, m, rt=rt)
        x_BxD = jnp.take_along_axis(x_BxWxD, at_B[:, None, None], axis=1)[:, 0]
        return jnp.argmax(model.head(params, x_BxD, m, rt), axis=-1)

    return jax.jit(next_token)


# ---------------------------------------------------------------- the harness model


@register_model("nanogptx")
class NanoGPTX(TemplateLM):
    """A trained nanogptx model directory (model=DIR) for lm-evaluation-harness. Rows longer
    than model.block_size + 1 tokens lose context from the left, as the harness's own models
    and nanogptx.eval do; an empty context (and a rolling window's first token) is predicted
    after the end-of-text token, the harness's prefix token. batch_size: rows per call, rounded
    up to a multiple of the local devices, over which each call's rows are split."""

    def __init__(
        self,
        model: str | None = None,
        batch_size: int | str | None = 32,
        max_gen_toks: int = 256,
        max_batch_size: int | None = None,
        device: str | None = None,  # lm_eval always passes one ("cuda:0"); JAX places the work
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise HarnessError(
                f"model_args: unknown {', '.join(sorted(unknown))}: the nanogptx model takes "
                "model=DIR (a trained model directory), batch_size and max_gen_toks"
            )
        if model is None:
            raise HarnessError("model_args: give model=DIR, a trained model directory")
        rows = whole(batch_size, 32)
        if rows is None or rows < 1:
            raise HarnessError(
                f"batch_size = {batch_size!r}: give a number of rows per call (e.g. 64); "
                "automatic batch sizes are not supported"
            )
        self._max_gen_toks = gen_toks(max_gen_toks)
        self.model_dir = Path(model)
        params, cfg, tok_dict = checkpoint.load_model(self.model_dir)
        self.model_sha256 = checkpoint.check_model_hash(self.model_dir)
        self.tok = tokenizer.from_manifest(tok_dict)
        self.m = cfg.model
        # Generation never picks a token the tokenizer cannot decode (as sample.py).
        vocab = min(self.m.vocab_size, self.tok.vocab_size)
        self.gen_m = dataclasses.replace(self.m, vocab_size=vocab)
        devices = jax.local_devices()
        self.mesh = Mesh(np.array(devices), ("data",))
        self.rows = -(-rows // len(devices)) * len(devices)
        self.rt = runtime.choose_for(self.m, devices[0])
        self.params = jax.device_put(params, NamedSharding(self.mesh, P()))
        self._score = make_scorer(self.m, self.rt)
        self._next = make_next_token(self.gen_m, self.rt)

    # The harness's view of the model.

    @property
    def eot_token_id(self) -> int:
        if self.tok.eot_token is None:
            raise HarnessError(
                f"{self.model_dir}: the {self.tok.name} tokenizer has no end-of-text token, "
                "which the harness predicts an empty context's (and a rolling window's) first "
                "token after: use a model with GPT-2 tokens"
            )
        return self.tok.eot_token

    @property
    def max_length(self) -> int:
        return self.m.block_size

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self.rows

    @property
    def device(self) -> str:
        return ", ".join(str(d) for d in self.mesh.devices.flat)

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **_: Any
    ) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, tokens: list[int], **_: Any) -> str:
        return self.tok.decode(tokens)

    def get_model_info(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "model_sha256": self.model_sha256,
            "block_size": self.m.block_size,
            "tokenizer": self.tok.name,
            "devices": self.device,
        }

    def _put(self, *arrays: np.ndarray) -> list[jax.Array]:
        rows = NamedSharding(self.mesh, P("data"))
        return [jax.device_put(a, rows) for a in arrays]

    # Log-likelihoods.

    def score_rows(self, rows: list[list[int]], spans: list[int], quiet: bool) -> list[tuple]:
        """(summed log-probability, all greedy) of the last spans[i] tokens of each row, each row
        at most block_size + 1 tokens; rows of alike length share a call, the longest first."""
        L, B = self.max_length, self.rows
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (row, n) in enumerate(zip(rows, spans, strict=True)):
            width = bucket(len(row), L + 1)
            groups.setdefault((width, bucket(n, width - 1)), []).append(i)
        logp, best = np.zeros(len(rows)), np.zeros(len(rows), bool)
        bar = tqdm(total=len(rows), disable=quiet, desc="nanogptx log-likelihoods")
        for (W, E), members in sorted(groups.items(), reverse=True):
            for lo in range(0, len(members), B):
                chunk = members[lo : lo + B]
                ids, at = np.zeros((B, W), np.int32), np.zeros((B, E), np.int32)
                weights = np.zeros((B, E), np.float32)
                for j, i in enumerate(chunk):
                    row, n = rows[i], spans[i]
                    ids[j, : len(row)] = row
                    at[j, :n] = np.arange(len(row) - n - 1, len(row) - 1)
                    weights[j, :n] = 1.0
                s, g = jax.device_get(self._score(self.params, *self._put(ids, at, weights)))
                logp[chunk], best[chunk] = s[: len(chunk)], g[: len(chunk)]
                bar.update(len(chunk))
        bar.close()
        return [(float(a), bool(b)) for a, b in zip(logp, best, strict=True)]

    def _loglikelihood_tokens(
        self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False, **_: Any
    ) -> list[tuple[float, bool]]:
        L = self.max_length
        rows, spans = [], []
        for key, ctx, cont in requests:
            if not cont:
                raise HarnessError(f"an empty continuation after {key!r}: nothing to score")
            if len(cont) > L:
                raise HarnessError(
                    f"a continuation of {len(cont)} tokens cannot follow even one context token "
                    f"in the model's window (model.block_size = {L}): {key!r}"
                )
            # No context token (a context of spaces, moved into the continuation): the
            # first token is predicted after end-of-text, as for an empty context.
            ctx = ctx or [self.eot_token_id]
            rows.append((ctx + cont)[-(L + 1) :])  # the context cut from the left
            spans.append(len(cont))
        out = self.score_rows(rows, spans, disable_tqdm)
        for (key, *_), result in zip(requests, out, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Each text's log-probability in disjoint windows of block_size predicted tokens, each
        from the block_size tokens before it (the first after the end-of-text token): the
        tiling of nanogptx.eval's whole-split loss."""
        windows, owner = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            pairs = get_rolling_token_windows(
                self.tok_encode(text), self.eot_token_id, self.max_length, 1
            )
            for ctx, cont in map(make_disjoint_window, pairs):
                windows.append((None, ctx, cont))
                owner.append(i)
        scores = self._loglikelihood_tokens(windows, disable_tqdm)
        totals = np.zeros(len(requests))
        np.add.at(totals, np.asarray(owner, np.int64), [s for s, _ in scores])
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, float(total))
        return totals.tolist()

    # Greedy generation.

    def greedy(self, prompts: list[list[int]], S: int, until: list[str]) -> list[str]:
        """Up to S greedy tokens after each prompt (at most block_size - S tokens each, at most
        batch_size prompts), each cut before the first of the stop strings `until`; all rows
        stop once each has met one."""
        L, B, k = self.max_length, self.rows, len(prompts)
        lens = np.array([len(p) for p in prompts] + [1] * (B - k))
        W = bucket(int(lens.max()) + S, L)
        ids = np.zeros((B, W), np.int32)
        for j, p in enumerate(prompts):
            ids[j, : len(p)] = p
        new: list[list[int]] = [[] for _ in range(k)]
        done = np.arange(B) >= k
        eot = self.tok.eot_token
        for t in range(S):
            at = lens + t - 1  # the position each row's next token is predicted from
            width = bucket(int(at.max()) + 1, W)
            tok_B = np.asarray(self._next(self.params, *self._put(ids[:, :width], at)))
            for j in np.flatnonzero(~done):
                new[j].append(int(tok_B[j]))
                ids[j, lens[j] + t] = tok_B[j]
                text = self.tok.decode(new[j])
                done[j] = tok_B[j] == eot or any(s and s in text for s in until)
            if done.all():
                break
        return [postprocess_generated_text(self.tok.decode(n), until, None) for n in new]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        L = self.max_length
        out: list[str] = [""] * len(requests)
        groups: dict[str, list[int]] = {}  # requests with the same generation settings
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="nanogptx generation")
        for members in groups.values():
            kwargs = normalize_gen_kwargs(requests[members[0]].args[1], self.max_gen_toks)
            if kwargs.get("do_sample") or kwargs.get("temperature"):
                raise HarnessError(
                    f"generation settings {requests[members[0]].args[1]!r}: the nanogptx model "
                    "decodes greedily only (do_sample false, temperature 0)"
                )
            eos = None if self.tok.eot_token is None else self.tok_decode([self.tok.eot_token])
            until = handle_stop_sequences(kwargs.get("until"), eos=eos)
            S = gen_toks(kwargs["max_gen_toks"])
            if S >= L:
                raise HarnessError(
                    f"max_gen_toks = {S} leaves no room for a prompt in the model's window "
                    f"(model.block_size = {L}): give max_gen_toks below {L}"
                )
            prompts = {}
            for i in members:  # the context cut from the left to leave room for S tokens
                ids = self.tok_encode(requests[i].args[0])[-(L - S) :]
                prompts[i] = ids or [self.eot_token_id]
            order = sorted(members, key=lambda i: -len(prompts[i]))
            for lo in range(0, len(order), self.rows):
                chunk = order[lo : lo + self.rows]
                for i, text in zip(chunk, self.greedy([prompts[i] for i in chunk], S, until),
                                   strict=True):  # fmt: skip
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(chunk))
        bar.close()
        return out


def main(argv: list[str] | None = None) -> None:
    """lm_eval's own command line, with the nanogptx model registered (lm-eval 0.4.13 finds
    models of other packages only when they are imported first)."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["python -m nanogptx.harness", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    except UserError as err:
        print(f"python -m nanogptx.harness: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
