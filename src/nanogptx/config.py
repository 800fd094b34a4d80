"""The typed config tree: frozen dataclasses with defaults; a run is a TOML file of differences.

    cfg = load("config/shakespeare-char.toml", ["train.max_iters=100"])

Every stage takes `--config FILE` and `section.key=value` overrides (see `add_arguments`).
Unknown keys, wrong types and impossible values raise ConfigError before any work is done.
This module is imported by the Snakefile, so it must stay light: standard library only.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanogptx.errors import UserError


class ConfigError(UserError, ValueError):
    """A config value that is unknown, of the wrong type, or impossible."""


def _f(default: Any, help: str, choices: tuple | None = None) -> Any:
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _f("tinyshakespeare", "dataset name in the registry (nanogptx.datasets)")
    cleaning: tuple[str, ...] = _f(
        ("normalize_newlines",),
        "cleaning functions applied to each document, in order "
        "(normalize_newlines, strip, drop_short)",
    )
    min_chars: int = _f(0, "drop_short removes documents with fewer characters than this")
    decode_errors: str = _f(
        "strict",
        "what to do with bytes that are not UTF-8, or JSON text holding a lone surrogate "
        "(\\ud800): strict (error naming file and offset or line) or replace (U+FFFD)",
        ("strict", "replace"),
    )
    split: str = _f(
        "fraction",
        "fraction: the last val_fraction of the text is val (nanoGPT); first_docs: the "
        "first val_docs documents are val; files: files named *val* are val",
        ("fraction", "first_docs", "files"),
    )
    val_fraction: float = _f(0.1, "share of the text that forms val when split = fraction")
    val_docs: int = _f(0, "number of leading documents that form val when split = first_docs")
    max_docs: int = _f(0, "read at most this many documents (0: all); for quick looks")
    shard_tokens: int = _f(100_000_000, "tokens per shard")
    shard_format: str = _f("npy", "shard file format", ("npy", "parquet"))
    allow_unverified: bool = _f(
        False, "accept a download whose sha256 is neither pinned nor announced by the server"
    )


@dataclass(frozen=True)
class TokenizerConfig:
    name: str = _f(
        "char", "char (vocabulary built from the data) or gpt2 (tiktoken)", ("char", "gpt2")
    )


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = _f(12, "transformer blocks")
    n_head: int = _f(12, "attention heads per block")
    n_embd: int = _f(768, "residual stream width")
    block_size: int = _f(1024, "context length in tokens")
    vocab_size: int = _f(0, "vocabulary size: tokens the model predicts (0: the tokenizer's)")
    vocab_multiple: int = _f(
        0,
        "round the embedding rows up to a multiple of this (64 or 128: a GPU speed knob); the "
        "padded rows never get probability (their logits are masked) and export strips them",
    )
    init_from: str = _f(
        "scratch",
        "scratch (random init); gpt2, gpt2-medium, gpt2-large or gpt2-xl: OpenAI's weights, "
        "downloaded as dataset hf-<name> by the download stage; or a directory in Hugging "
        "Face's GPT-2 layout (config.json + model.safetensors). A pretrained init sets the "
        "architecture keys; a conflicting one is an error (block_size may be smaller: the "
        "position embeddings are cropped)",
    )
    dropout: float = _f(0.0, "dropout rate in training (0 to 1)")
    bias: bool = _f(True, "biases in Linear and LayerNorm layers, as GPT-2")
    position: str = _f(
        "learned",
        "learned absolute position embeddings (GPT-2), or rope: rotary embeddings of q and k "
        "(relative positions; sampling past block_size slides the KV cache)",
        ("learned", "rope"),
    )
    rope_theta: float = _f(10_000.0, "rope's base: frequencies theta^(-2i/K) for head width K")
    norm: str = _f(
        "layernorm",
        "layernorm (GPT-2) or rmsnorm (no centring, no bias), for every norm of the model",
        ("layernorm", "rmsnorm"),
    )
    norm_gain: bool = _f(True, "learned gains (scales) in the norms; false: none")
    qk_norm: bool = _f(
        False,
        "queries and keys normalised per head before attention (qk-layernorm; gains: norm_gain)",
    )
    activation: str = _f(
        "gelu",
        "MLP: gelu (exact, nanoGPT), gelu_tanh (HF GPT-2's tanh form), relu2 (relu(x)^2, "
        "modded-nanogpt), swiglu (silu(x W) * (x V), its width 8 D / 3 rounded up to 64)",
        ("gelu", "gelu_tanh", "relu2", "swiglu"),
    )
    mlp_width: int = _f(0, "MLP hidden width (0: 4 n_embd, or swiglu's rule)")
    n_kv_head: int = _f(0, "key/value heads (grouped-query attention); 0: n_head")
    tie_embeddings: bool = _f(True, "the output head is wte transposed (GPT-2); false: its own")
    logit_softcap: float = _f(0.0, "cap * tanh(logits / cap) on the output logits (0: none)")
    z_loss: float = _f(
        0.0, "coefficient of PaLM's auxiliary loss mean(log(Z)^2) on the output logits (0: none)"
    )
    kernels: str = _f(
        "auto",
        "the primitives: fast (hand-written gradients, measured on XLA's CPU backend), reference "
        "(plain jnp and JAX's own derivatives, so jax.jvp and jax.hessian work), auto (fast); "
        "the same values to float32 rounding",
        ("auto", "fast", "reference"),
    )
    attention: str = _f(
        "auto",
        "attention implementation: einsum, xla or cudnn (jax.nn.dot_product_attention; cudnn "
        "needs a GPU of compute capability 8.0 or later, a 16-bit train.compute_dtype and a "
        "head width n_embd / n_head that is a multiple of 8 of at most 128, or 256 on 9.0 "
        "(Hopper) and later; sampling and evaluation, in float32, run xla instead); auto: "
        "einsum on CPU, on GPU cudnn where it can run, else xla (the log says why)",
        ("auto", "einsum", "xla", "cudnn"),
    )
    remat: str = _f(
        "none",
        "rematerialisation in training: none (every block's activations kept for the backward); "
        "block (only each block's input kept, the block recomputed in the backward: the least "
        "memory, one more forward of the blocks, 18% more FLOPs for GPT-2 124M); dots (the "
        "linear layers' matmul outputs kept, the rest recomputed: 5% more FLOPs there). How it "
        "runs, not what it computes: the same values, and a checkpoint resumes under another",
        ("none", "block", "dots"),
    )


@dataclass(frozen=True)
class TrainConfig:
    seed: int = _f(1337, "seed of parameters, batches and dropout")
    batch_size: int = _f(
        12,
        'sequences per micro-batch, over all devices; 0 (or "auto"): the largest that divides the '
        "rows of a step (total_batch_tokens / block_size) and whose compiled programs fit the "
        "devices' memory (on a CPU: at most 8192 tokens per device), chosen before any data "
        "is read (python -m nanogptx.plan shows it)",
    )
    total_batch_tokens: int = _f(
        0,
        "tokens per optimizer step; a multiple of batch_size * block_size, accumulated "
        "over micro-batches (0: one micro-batch; needed by batch_size = 0)",
    )
    max_iters: int = _f(600_000, "optimizer steps")
    learning_rate: float = _f(6e-4, "peak learning rate")
    min_lr: float = _f(6e-5, "learning rate at the end of the decay (cosine, linear, wsd)")
    warmup_iters: int = _f(2000, "steps of linear warmup")
    lr_decay_iters: int = _f(600_000, "step where the decay reaches min_lr (cosine, linear, wsd)")
    decay_lr: bool = _f(
        True, "warmup, then lr_schedule; false: learning_rate from step 0 (nanoGPT's decay_lr)"
    )
    optimizer: str = _f(
        "adamw",
        "adamw; muon (Newton-Schulz orthogonalised momentum for the hidden matrices, AdamW for "
        "embeddings, gains and biases); lion (about 10x smaller learning rates than adamw's); "
        "adafactor (steps relative to each matrix's RMS: about 10x larger ones)",
        ("adamw", "muon", "lion", "adafactor"),
    )
    muon_learning_rate: float = _f(
        0.02, "peak learning rate of muon's matrices (the schedule's shape as learning_rate's)"
    )
    muon_momentum: float = _f(0.95, "muon's momentum (Nesterov)")
    weight_decay: float = _f(0.1, "weight decay, on matrices only")
    weight_decay_mode: str = _f(
        "decoupled",
        "decoupled: each step subtracts lr * weight_decay * p (AdamW); independent: (lr / "
        "learning_rate) * weight_decay * p, independent of the peak learning rate (Wortsman "
        "et al. 2023)",
        ("decoupled", "independent"),
    )
    lr_schedule: str = _f(
        "cosine",
        "after the warmup: cosine (nanoGPT) or linear decay to min_lr at lr_decay_iters; wsd: "
        "constant, then a linear cooldown to min_lr over the last cooldown_frac of "
        "lr_decay_iters; constant",
        ("cosine", "wsd", "linear", "constant"),
    )
    cooldown_frac: float = _f(0.2, "share of lr_decay_iters that wsd's cooldown takes")
    beta1: float = _f(0.9, "beta1 of adamw, lion and muon's AdamW part (adafactor: unused)")
    beta2: float = _f(0.95, "beta2 of adamw, lion and muon's AdamW part (adafactor: unused)")
    grad_clip: float = _f(1.0, "clip gradients to this global norm (0: no clipping)")
    on_divergence: str = _f(
        "fail",
        "a NaN or inf loss or gradient norm: fail stops the stage with an error (the last good "
        "checkpoint kept); stop (a sweep's points) makes a divergence a result: that, or a "
        "training loss above the step-0 loss at each of divergence_steps consecutive steps "
        "after the warmup, ends the training there and writes the model marked diverged, with "
        "its step, in provenance.json and metrics.jsonl",
        ("fail", "stop"),
    )
    divergence_steps: int = _f(
        50,
        "with on_divergence = stop: how many consecutive steps after the warmup the training "
        "loss must stay above the step-0 loss for the run to count as diverged. A loss spike "
        "the run recovers from (one noisy batch, or a few steps of instability) is not a "
        "divergence: Wortsman et al. (2023) score such a run by its final loss",
    )
    eval_interval: int = _f(2000, "evaluate every this many steps")
    eval_iters: int = _f(200, "validation (and train-estimate) batches per evaluation")
    eval_only: bool = _f(False, "evaluate once and stop")
    batch_order: str = _f(
        "random", "random windows (nanoGPT) or sequential windows", ("random", "sequential")
    )
    compute_dtype: str = _f(
        "float32", "dtype of activations and matmuls", ("float32", "bfloat16", "float16")
    )
    sharding: str = _f(
        "dp",
        "dp: batch sharded, parameters replicated; fsdp: parameters sharded too",
        ("dp", "fsdp"),
    )
    checkpoint_interval: int = _f(1000, "save a checkpoint every this many steps (0: only final)")
    resume: str = _f(
        "latest",
        "latest: resume from the newest checkpoint, and stop with an error if it is damaged; "
        "latest_valid: resume from the newest intact one, saying which were skipped and why",
        ("latest", "latest_valid"),
    )
    keep_checkpoints: int = _f(2, "checkpoints kept on disk")
    peak_flops: float = _f(0.0, "peak FLOP/s of one device for MFU (0: a table by device kind)")
    measure_peak: bool = _f(
        False, "for a device the table lacks, measure the peak (a matmul) at start; else no MFU"
    )
    profile_start: int = _f(0, "first step of a jax.profiler trace (0: no trace)")
    profile_steps: int = _f(5, "steps in the profiler trace")


@dataclass(frozen=True)
class SampleConfig:
    start: str = _f("\n", "prompt text, or FILE:path to read it from a file")
    num_samples: int = _f(10, "samples generated together as one batch")
    max_new_tokens: int = _f(500, "tokens generated per sample")
    temperature: float = _f(0.8, "softmax temperature (> 0)")
    top_k: int = _f(200, "keep only the k most likely tokens (0: all)")
    top_p: float = _f(1.0, "keep the smallest set of tokens with this total probability")
    seed: int = _f(1337, "sampling seed")
    window_shift: int = _f(
        0,
        "when prompt + samples outgrow model.block_size, drop this many of the oldest tokens "
        "and re-encode the rest (learned positions rule out sliding the KV cache); 1 is "
        "nanoGPT's exact crop, one full forward pass per token (0: block_size // 4); unused "
        "with model.position = rope, whose cache slides",
    )


@dataclass(frozen=True)
class EvalConfig:
    tasks: tuple[str, ...] = _f(
        ("val_loss",), "eval tasks, each a file config/tasks/NAME.toml (val_loss, hellaswag, ...)"
    )
    batch_size: int = _f(8, "windows (split_loss) or items (multiple_choice) per batch")
    max_windows: int = _f(0, "split_loss: score at most this many windows (0: the whole split)")
    max_items: int = _f(0, "multiple_choice: score the first this many items (0: all)")


@dataclass(frozen=True)
class LoggingConfig:
    log_interval: int = _f(10, "print and record metrics every this many steps")
    stats_interval: int = _f(
        100,
        "every this many steps, record diagnostics (kind stats in metrics.jsonl): per layer the "
        "RMS of parameters, gradients and updates (of the whole step) and the largest attention "
        "logit (in a forward of rows 0-7 of the step's first micro-batch, without dropout), and "
        "the output logits' mean log Z over the whole step (0: none)",
    )
    wandb_mode: str = _f("disabled", "wandb logging", ("disabled", "offline", "online"))
    wandb_project: str = _f("nanogptx", "wandb project")
    wandb_run_name: str = _f("", "wandb run name (empty: the run's name)")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


SECTIONS: dict[str, type] = {
    f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)
}

# Which sections each stage depends on: Snakemake reruns a stage when one of them changes.
# (Data and tokenizer changes reach train and sample through their inputs' paths: data_id.)
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "prepare": ("data", "tokenizer"),
    "train": ("model", "train", "logging"),
    "sample": ("sample",),
    "eval": ("eval",),
}
# Data settings that do not change the prepared bytes, so not the prepared data's identity.
NOT_DATA_IDENTITY = ("data.allow_unverified",)
# Model settings of how it runs, not what it computes: a checkpoint resumes under any of them.
RUNTIME_KEYS = ("kernels", "attention", "remat")
# Tokens per micro-batch: a program indexes its positions in int32 (the loss's chunks); and per
# step, the same bound (128x the largest published batches) keeps auto's search for a divisor
# of the step's rows short.
MAX_TOKENS = 2**31 - 1
# Keys whose 0 means "chosen for you", which a file or an override may also spell "auto".
AUTO = {"train.batch_size": "auto"}
# cuDNN's flash attention (JAX 0.10): head widths that are a multiple of this, and at most this
# on any GPU (256 from compute capability 9.0, 128 before: runtime.cudnn_refusal).
CUDNN_HEAD_MULTIPLE, CUDNN_MAX_HEAD = 8, 256
# Train settings a resumed run must share with its checkpoint. With the model and the data they
# name the checkpoint directory (checkpoint_id): raising max_iters or lr_decay_iters, or editing
# evaluation, checkpointing or logging, resumes; editing one of these starts afresh.
RESUME_KEYS = (
    "seed", "batch_size", "total_batch_tokens", "learning_rate", "min_lr", "warmup_iters",
    "decay_lr", "weight_decay", "beta1", "beta2", "grad_clip", "batch_order", "compute_dtype",
    "optimizer", "muon_learning_rate", "muon_momentum", "weight_decay_mode",
)  # fmt: skip


# OpenAI's GPT-2 checkpoints (nanoGPT's table): layers, heads, width. Every one has 1024
# positions, a vocabulary of 50257, biases, tanh GELU (HF GPT-2's "gelu_new") and a tied head.
GPT2_CHECKPOINTS = {
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
}
GPT2_ARCHITECTURE = {
    "block_size": 1024, "vocab_size": 50257, "bias": True, "position": "learned",
    "norm": "layernorm", "norm_gain": True, "qk_norm": False, "activation": "gelu_tanh",
    "mlp_width": 0, "n_kv_head": 0, "tie_embeddings": True, "logit_softcap": 0.0,
}  # fmt: skip
# HF's activation_function names for the activations GPT-2 can have.
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def init_dataset(init_from: str) -> str | None:
    """The registry dataset holding a named checkpoint's weights (None: scratch or a directory)."""
    return f"hf-{init_from}" if init_from in GPT2_CHECKPOINTS else None


def hf_architecture(path: Path) -> dict[str, Any]:
    """The [model] keys of a Hugging Face GPT-2 config.json; anything GPT-2 in our model cannot
    be (another architecture, another norm epsilon, scaled attention variants) raises."""
    try:
        c = json.loads(Path(path).read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: expected a Hugging Face GPT-2 config") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it as JSON: {e}") from None
    if not isinstance(c, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    archs = c.get("architectures") or ["GPT2LMHeadModel"]
    known = ("GPT2LMHeadModel", "GPT2Model")
    if c.get("model_type") != "gpt2" or not all(a in known for a in archs):
        raise ConfigError(
            f"{path}: architecture {c.get('model_type')!r} {archs}: expected model_type "
            f"'gpt2' with architectures among {list(known)}"
        )
    out: dict[str, Any] = {}
    for key, ours in (("n_layer",) * 2, ("n_head",) * 2, ("n_embd",) * 2,
                      ("n_positions", "block_size"), ("vocab_size",) * 2):  # fmt: skip
        value = c.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{path}: {key} = {value!r}: expected an integer > 0")
        out[ours] = value
    act = c.get("activation_function", "gelu_new")
    if act not in HF_ACTIVATIONS:
        raise ConfigError(
            f"{path}: activation_function = {act!r}: expected one of {list(HF_ACTIVATIONS)}"
        )
    eps = c.get("layer_norm_epsilon", 1e-5)
    if eps != 1e-5:
        raise ConfigError(f"{path}: layer_norm_epsilon = {eps!r}: expected 1e-05 (ours)")
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("reorder_and_upcast_attn", False)):  # fmt: skip
        if c.get(key, want) != want:
            raise ConfigError(f"{path}: {key} = {c[key]!r}: only {want!r} is supported")
    n_inner = c.get("n_inner") or 0
    if not isinstance(n_inner, int) or n_inner < 0:
        raise ConfigError(f"{path}: n_inner = {n_inner!r}: expected null or an integer > 0")
    out["mlp_width"] = 0 if n_inner == 4 * out["n_embd"] else n_inner
    out["activation"] = HF_ACTIVATIONS[act]
    out["tie_embeddings"] = bool(c.get("tie_word_embeddings", True))
    return {**GPT2_ARCHITECTURE, **out}


def pretrained_architecture(init_from: str, source: str) -> dict[str, Any]:
    """The [model] keys that model.init_from fixes: a named checkpoint's, or a directory's."""
    if init_from in GPT2_CHECKPOINTS:
        n_layer, n_head, n_embd = GPT2_CHECKPOINTS[init_from]
        return {**GPT2_ARCHITECTURE, "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd}
    if not Path(init_from).is_dir():
        raise ConfigError(
            f"{source}: model.init_from = {init_from!r}: expected scratch, one of "
            f"{list(GPT2_CHECKPOINTS)}{_suggest(init_from, GPT2_CHECKPOINTS)}, or a directory "
            "in Hugging Face's GPT-2 layout (config.json + model.safetensors)"
        )
    return hf_architecture(Path(init_from) / "config.json")


def _resolve_init(cfg: Config, explicit: dict[str, Any], source: str) -> Config:
    """With a pretrained model.init_from, the architecture follows the checkpoint: keys the run
    leaves unset take its values; a key set to another value raises, naming both (block_size
    may be smaller, as nanoGPT's crop_block_size; vocab_size may be left 0)."""
    m = cfg.model
    if m.init_from == "scratch":
        return cfg
    arch = pretrained_architecture(m.init_from, source)
    for key, theirs in arch.items():
        if key not in explicit or explicit[key] == theirs:
            continue
        if key == "block_size" and 0 < explicit[key] <= theirs:
            arch[key] = explicit[key]
        elif not (key == "vocab_size" and explicit[key] == 0):
            raise ConfigError(
                f"{source}: model.{key} = {explicit[key]!r}, but model.init_from = "
                f"{m.init_from!r} has {key} = {theirs!r}: remove the key or set it to that"
            )
    return dataclasses.replace(cfg, model=dataclasses.replace(m, **arch))


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return value coerced to tp (int -> float, list -> tuple) or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of {item_tp.__name__}, got {value!r}")
        return tuple(_check_type(v, item_tp, where) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (tp is int and isinstance(value, bool)) or not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    if tp is int and not -(2**63) <= value < 2**63:  # numpy's and JAX's widest integer
        raise ConfigError(f"{where}: {value} does not fit in 64 bits: expected a smaller integer")
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    if tp is str and not is_text(value):
        raise ConfigError(
            f"{where}: {value!r} holds a lone surrogate, which no file can hold as text (an "
            "argument with bytes that are not UTF-8?): expected Unicode text"
        )
    return value


def is_text(s: str) -> bool:
    """Whether s is Unicode text, which UTF-8 (and so TOML and JSON files) can hold: no lone
    surrogates (Python's stand-ins for undecodable bytes of a command line)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _suggest(name: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_values(
    cfg: Config, source: str, registry: bool = True, tokenizer_known: bool = True
) -> None:
    """Impossible values and combinations, each named with its key and the file; with
    registry, data.dataset against its dataset file (config/datasets/NAME.toml).
    tokenizer_known: the config says which tokenizer the model has (a run's file does; the
    defaults with overrides of a stage run alone may not, and the stage checks its model)."""
    m, t, d, s = cfg.model, cfg.train, cfg.data, cfg.sample

    def need(ok: bool, key: str, value: Any, expected: str) -> None:
        if not ok:
            raise ConfigError(f"{source}: {key} = {value!r}: expected {expected}")

    for section in (d, m, t, s, cfg.eval, cfg.logging):
        name = next(k for k, v in SECTIONS.items() if isinstance(section, v))
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            choices = f.metadata.get("choices")
            if choices:
                need(value in choices, f"{name}.{f.name}", value, f"one of {list(choices)}")
    if registry:
        check_dataset(d.dataset, source)
    from_cleaning = {"normalize_newlines", "strip", "drop_short"}
    for c in d.cleaning:
        need(
            c in from_cleaning,
            "data.cleaning",
            c,
            f"one of {sorted(from_cleaning)}" + _suggest(c, from_cleaning),
        )
    need(0.0 < d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "between 0 and 1")
    need(d.val_docs >= 0, "data.val_docs", d.val_docs, ">= 0")
    need(
        d.split != "first_docs" or d.val_docs > 0,
        "data.val_docs",
        d.val_docs,
        "> 0 when data.split = first_docs",
    )
    need(d.max_docs >= 0, "data.max_docs", d.max_docs, ">= 0")
    need(d.min_chars >= 0, "data.min_chars", d.min_chars, ">= 0")
    need(d.shard_tokens > 0, "data.shard_tokens", d.shard_tokens, "> 0")
    for key in ("n_layer", "n_head", "n_embd", "block_size"):
        need(getattr(m, key) > 0, f"model.{key}", getattr(m, key), "> 0")
    need(m.vocab_size >= 0, "model.vocab_size", m.vocab_size, ">= 0 (0: the tokenizer's)")
    gpt2 = GPT2_ARCHITECTURE["vocab_size"]
    need(
        cfg.tokenizer.name != "gpt2" or m.vocab_size == 0 or m.vocab_size >= gpt2,
        "model.vocab_size",
        m.vocab_size,
        f"0 or at least {gpt2}, the gpt2 tokenizer's vocabulary",
    )
    need(m.vocab_multiple >= 0, "model.vocab_multiple", m.vocab_multiple, ">= 0 (0: no padding)")
    need(
        m.init_from not in GPT2_CHECKPOINTS or cfg.tokenizer.name == "gpt2",
        "tokenizer.name",
        cfg.tokenizer.name,
        f"gpt2 with model.init_from = {m.init_from!r} (its vocabulary is GPT-2's)",
    )
    need(
        m.n_embd % m.n_head == 0,
        "model.n_embd",
        m.n_embd,
        f"a multiple of model.n_head = {m.n_head}",
    )
    need(0.0 <= m.dropout < 1.0, "model.dropout", m.dropout, "in [0, 1)")
    need(m.n_kv_head >= 0, "model.n_kv_head", m.n_kv_head, ">= 0 (0: n_head)")
    need(
        m.n_head % (m.n_kv_head or m.n_head) == 0,
        "model.n_kv_head",
        m.n_kv_head,
        f"a divisor of model.n_head = {m.n_head}",
    )
    need(
        m.position != "rope" or (m.n_embd // m.n_head) % 2 == 0,
        "model.n_head",
        m.n_head,
        f"a head width n_embd / n_head = {m.n_embd // m.n_head} that is even, for rope",
    )
    need(m.rope_theta > 0, "model.rope_theta", m.rope_theta, "> 0")
    need(m.mlp_width >= 0, "model.mlp_width", m.mlp_width, ">= 0 (0: the activation's rule)")
    need(m.logit_softcap >= 0, "model.logit_softcap", m.logit_softcap, ">= 0 (0: none)")
    need(m.z_loss >= 0, "model.z_loss", m.z_loss, ">= 0")
    need(
        m.attention != "cudnn" or t.compute_dtype != "float32",
        "model.attention",
        m.attention,
        "auto, einsum or xla with train.compute_dtype = 'float32' (cuDNN's attention runs "
        "bfloat16 or float16)",
    )
    K = m.n_embd // m.n_head
    need(
        m.attention != "cudnn" or (K % CUDNN_HEAD_MULTIPLE == 0 and K <= CUDNN_MAX_HEAD),
        "model.attention",
        m.attention,
        f"auto, einsum or xla with a head width n_embd / n_head = {K} (cuDNN's attention needs "
        f"a multiple of {CUDNN_HEAD_MULTIPLE} of at most {CUDNN_MAX_HEAD}, and at most 128 "
        "before compute capability 9.0)",
    )
    need(t.batch_size >= 0, "train.batch_size", t.batch_size, ">= 0 (0: auto)")
    if t.batch_size == 0:
        need(
            t.total_batch_tokens > 0 and t.total_batch_tokens % m.block_size == 0,
            "train.total_batch_tokens",
            t.total_batch_tokens,
            f"a multiple of model.block_size = {m.block_size} with train.batch_size = 0 (auto "
            "divides the rows of a step into micro-batches)",
        )
    micro = max(t.batch_size, 1) * m.block_size
    need(micro <= MAX_TOKENS, "train.batch_size", t.batch_size,
         f"at most {MAX_TOKENS // m.block_size} (a micro-batch holds at most 2^31 - 1 tokens: "
         f"batch_size * model.block_size = {micro})")  # fmt: skip
    need(t.total_batch_tokens <= MAX_TOKENS, "train.total_batch_tokens", t.total_batch_tokens,
         f"at most 2^31 - 1 = {MAX_TOKENS}")  # fmt: skip
    need(
        t.total_batch_tokens >= 0 and t.total_batch_tokens % micro == 0,
        "train.total_batch_tokens",
        t.total_batch_tokens,
        f"0 or a multiple of train.batch_size * model.block_size = {micro}",
    )
    for key in ("eval_iters", "eval_interval", "keep_checkpoints", "divergence_steps"):
        need(getattr(t, key) > 0, f"train.{key}", getattr(t, key), "> 0")
    need(t.max_iters >= 0, "train.max_iters", t.max_iters, ">= 0 (0: no step, the initial model)")
    for key in ("warmup_iters", "lr_decay_iters", "checkpoint_interval", "profile_start"):
        need(getattr(t, key) >= 0, f"train.{key}", getattr(t, key), ">= 0")
    need(t.profile_steps > 0, "train.profile_steps", t.profile_steps, "> 0")
    need(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "> 0")
    need(
        0 <= t.min_lr <= t.learning_rate,
        "train.min_lr",
        t.min_lr,
        f"between 0 and train.learning_rate = {t.learning_rate}",
    )
    need(
        not t.decay_lr or t.lr_decay_iters > t.warmup_iters,
        "train.lr_decay_iters",
        t.lr_decay_iters,
        f"> train.warmup_iters = {t.warmup_iters}",
    )
    need(
        t.decay_lr or t.lr_schedule in ("cosine", "constant"),
        "train.decay_lr",
        t.decay_lr,
        f"true with train.lr_schedule = {t.lr_schedule!r} (false is a constant learning rate "
        "from step 0, which no schedule follows; lr_schedule = 'constant' warms up first)",
    )
    need(t.muon_learning_rate > 0, "train.muon_learning_rate", t.muon_learning_rate, "> 0")
    need(0 <= t.muon_momentum < 1, "train.muon_momentum", t.muon_momentum, "in [0, 1)")
    need(0 < t.cooldown_frac <= 1, "train.cooldown_frac", t.cooldown_frac, "in (0, 1]")
    need(0 <= t.beta1 < 1, "train.beta1", t.beta1, "in [0, 1)")
    need(0 <= t.beta2 < 1, "train.beta2", t.beta2, "in [0, 1)")
    need(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, ">= 0")
    need(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, ">= 0")
    need(t.peak_flops >= 0, "train.peak_flops", t.peak_flops, ">= 0")
    need(s.num_samples > 0, "sample.num_samples", s.num_samples, "> 0")
    need(s.max_new_tokens > 0, "sample.max_new_tokens", s.max_new_tokens, "> 0")
    need(s.temperature > 0, "sample.temperature", s.temperature, "> 0")
    need(s.top_k >= 0, "sample.top_k", s.top_k, ">= 0")
    need(0 < s.top_p <= 1, "sample.top_p", s.top_p, "in (0, 1]")
    need(
        0 <= s.window_shift <= m.block_size,
        "sample.window_shift",
        s.window_shift,
        f"0 (block_size // 4) to model.block_size = {m.block_size}",
    )
    need(s.start != "FILE:", "sample.start", s.start, "text, or FILE:path with a path")
    for key, seed in (("train.seed", t.seed), ("sample.seed", s.seed)):
        need(0 <= seed < 2**32, key, seed, f"0 to {2**32 - 1} (a JAX key holds 32 bits)")
    e = cfg.eval
    from nanogptx import evaltasks  # light: the task registry is plain data

    tokenizer = cfg.tokenizer.name if tokenizer_known else None
    if problem := evaltasks.problem(e.tasks, tokenizer, registry):
        raise ConfigError(f"{source}: {problem}")
    need(e.batch_size > 0, "eval.batch_size", e.batch_size, "> 0")
    need(e.max_windows >= 0, "eval.max_windows", e.max_windows, ">= 0 (0: all)")
    need(e.max_items >= 0, "eval.max_items", e.max_items, ">= 0 (0: all)")
    need(cfg.logging.log_interval > 0, "logging.log_interval", cfg.logging.log_interval, "> 0")
    need(cfg.logging.stats_interval >= 0, "logging.stats_interval", cfg.logging.stats_interval,
         ">= 0 (0: none)")  # fmt: skip


def check_dataset(name: str, source: str) -> None:
    """data.dataset must name a dataset of text in the registry (its file only is read)."""
    from nanogptx import datasets  # light: the registry is plain data

    try:
        ds = datasets.get(name)
    except (datasets.UnknownDataset, datasets.RegistryError) as e:
        raise ConfigError(f"{source}: data.dataset: {e}") from None
    if ds.use != "train" or ds.reader == "none":
        what = f"{ds.use} data" if ds.use != "train" else "files no reader reads (reader none)"
        raise ConfigError(
            f"{source}: data.dataset = {name!r}: expected a dataset of text a reader makes "
            f"documents of, not {what} ({datasets.entry_file(name)})"
        )


def from_dict(
    tree: dict[str, Any],
    source: str = "<dict>",
    registry: bool = True,
    tokenizer_known: bool = True,
) -> Config:
    """Build a Config from a {section: {key: value}} tree of differences from the defaults;
    registry=False: data.dataset is not looked up (a trained model's own config);
    tokenizer_known: see _check_values."""
    sections = {}
    for name, values in tree.items():
        if name not in SECTIONS and not isinstance(values, dict):
            owners = [s for s, cls in SECTIONS.items() if name in typing.get_type_hints(cls)]
            hint = f"; put it under [{owners[0]}] (as {owners[0]}.{name})" if owners else ""
            raise ConfigError(f"{source}: key {name!r} is outside any [section]{hint}")
        if name not in SECTIONS:
            raise ConfigError(
                f"{source}: unknown section [{name}]{_suggest(name, SECTIONS)}; "
                f"known sections: {', '.join(SECTIONS)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table of key = value")
        cls = SECTIONS[name]
        hints = typing.get_type_hints(cls)
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(
                    f"{source}: unknown key {name}.{key}{_suggest(key, hints)}; "
                    f"known keys of [{name}]: {', '.join(hints)}"
                )
            if f"{name}.{key}" in AUTO and isinstance(value, str):
                if value != AUTO[f"{name}.{key}"]:
                    raise ConfigError(f"{source}: {name}.{key}: expected an int, or "
                                      f"{AUTO[f'{name}.{key}']!r} (0), got {value!r}")  # fmt: skip
                value = 0  # the word for 0: the same config, identity and checkpoints
            values[key] = _check_type(value, hints[key], f"{source}: {name}.{key}")
        sections[name] = cls(**values)
    cfg = _resolve_init(Config(**sections), tree.get("model", {}), source)
    _check_values(cfg, source, registry, tokenizer_known)
    return cfg


def _parse_override(item: str) -> tuple[str, str, Any]:
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(f"override {item!r}: expected section.key=value")
    lhs, raw = item.split("=", 1)
    section, key = lhs.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError as e:
        if raw.lstrip()[:1] in ("'", '"', "[", "{"):  # meant as TOML: never read as its text
            raise ConfigError(f"override {item!r}: not a valid TOML value: {e}") from None
        value = raw  # a bare string: data.dataset=fineweb
    return section, key, value


def step_rows(cfg: Config) -> int:
    """Sequences per optimizer step: train.total_batch_tokens / block_size, or one micro-batch."""
    t = cfg.train
    return t.total_batch_tokens // cfg.model.block_size if t.total_batch_tokens else t.batch_size


def micro_batches(cfg: Config, batch_size: int = 0) -> int:
    """Micro-batches (gradient accumulation) per step: the step's rows over micro-batches of
    batch_size (default train.batch_size; auto's, 0, must be resolved first), at least 1."""
    b = batch_size or cfg.train.batch_size
    if b <= 0:
        raise ValueError("train.batch_size = 0 (auto): resolve the micro-batch first")
    return max(1, step_rows(cfg) // b)


def load(
    path: str | Path | None = None, overrides: typing.Sequence[str] = (), registry: bool = True
) -> Config:
    """Defaults, then the TOML file at path, then `section.key=value` overrides. registry=False
    for what does not read data: a model directory's config.toml, the run file of a stage that
    uses other sections (a broken or removed dataset file then blocks nothing)."""
    tree: dict[str, dict[str, Any]] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a directory: expected a TOML file") from None
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None
        if data.startswith(b"\xef\xbb\xbf"):
            raise ConfigError(
                f"{path} starts with a UTF-8 byte-order mark (BOM), which TOML does not allow: "
                "save it as UTF-8 without BOM"
            )
        try:
            tree = tomllib.loads(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for item in overrides:
        section, key, value = _parse_override(item)
        if not isinstance(tree.setdefault(section, {}), dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        tree[section][key] = value
    if overrides:
        source += " + overrides " + " ".join(overrides)
    known = path is not None or "tokenizer" in tree  # else the stage checks its model
    return from_dict(tree, source, registry, tokenizer_known=known)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a Config or of one section (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def sections(cfg: Config, names: typing.Iterable[str]) -> dict[str, Any]:
    return {name: to_dict(getattr(cfg, name)) for name in names}


def settings(
    cfg: Config, names: typing.Iterable[str], keys: typing.Container[str] | None = None
) -> list[str]:
    """Every resolved key of the named sections as "section.key=value" (a TOML value, so the
    item is also an override), in definition order; `keys`: only these section.key names."""
    out = []
    for name, values in sections(cfg, names).items():
        for key, value in values.items():
            if keys is None or f"{name}.{key}" in keys:
                out.append(f"{name}.{key}={_toml_value(value)}")
    return out


def _sha256(items: typing.Iterable[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def data_settings(cfg: Config) -> list[str]:
    """The settings that make the prepared bytes: [data] (but NOT_DATA_IDENTITY) and [tokenizer]."""
    items = settings(cfg, ("data", "tokenizer"))
    return [item for item in items if item.split("=", 1)[0] not in NOT_DATA_IDENTITY]


def data_id(cfg: Config) -> str:
    """Directory name of the prepared data: runs with equal data settings share it."""
    return f"{cfg.data.dataset}-{cfg.tokenizer.name}-{_sha256(data_settings(cfg))[:10]}"


def resume_settings(cfg: Config) -> list[str]:
    """What a checkpoint must share with the run resuming from it: model, data, RESUME_KEYS."""
    model = [s for s in settings(cfg, ("model",)) if s.split("=")[0][6:] not in RUNTIME_KEYS]
    train = settings(cfg, ("train",), {f"train.{k}" for k in RESUME_KEYS})
    return [*model, *train, f"data_id={data_id(cfg)}"]


def checkpoint_id(cfg: Config) -> str:
    """Directory name of a run's checkpoints: changes exactly when a resume would be refused."""
    return _sha256(resume_settings(cfg))[:10]


# A run's name: its file config/NAME.toml, its results/NAME/ directory and its job names.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_run_name(name: str) -> str:
    if not RUN_NAME.fullmatch(name):
        raise ConfigError(
            f"run name {name!r}: expected letters, digits, '.', '_' and '-' only, starting with a "
            "letter or digit (it names config/NAME.toml and results/NAME/)"
        )
    return name


# ---- The workflow's config: config/config.yaml, with `snakemake --config KEY=VALUE` on top.
# The Snakefile and `status` take it through these, so that both select the same runs.
WORKFLOW_SCHEMA = Path("workflow/schemas/config.schema.yaml")


def workflow_value(text: str) -> Any:
    """A `--config KEY=VALUE` value as Snakemake reads it (snakemake.cli.parse_config): an
    integer, a float, True or False, else YAML with every scalar a string (runs=[a,b]), else
    the text itself; empty: None."""
    if text == "":
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    if text in ("True", "False"):
        return text == "True"
    import yaml  # Snakemake's own dependency, imported only here

    try:
        return yaml.load(text, Loader=yaml.loader.BaseLoader)
    except yaml.YAMLError:
        return text


def update_workflow(tree: dict[str, Any], key: str, value: Any) -> None:
    """tree[key] = value, merging a table into the one there (as Snakemake's update_config)."""
    if isinstance(value, dict) and isinstance(tree.get(key), dict):
        for k, v in value.items():
            update_workflow(tree[key], k, v)
    else:
        tree[key] = value


def check_workflow(tree: dict[str, Any], schema: Path = WORKFLOW_SCHEMA) -> None:
    """ConfigError, in one line, for what the workflow's schema refuses in tree: an unknown key
    with the closest known one, or a value and what the schema expects there."""
    import jsonschema  # Snakemake's own dependencies, imported only here
    import yaml

    rules = yaml.safe_load(Path(schema).read_text("utf-8"))
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(rules).iter_errors(tree)
    )
    if error is None:
        return
    path = list(error.absolute_path)
    where = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip(".")
    if error.validator == "additionalProperties":
        node = rules
        for k in path:
            node = node["properties"][k]
        known = list(node["properties"])
        unknown = sorted(set(error.instance) - set(known))[0]
        hint = _suggest(unknown, known)
        # A run's own setting (n_layer=3) is not a workflow key: say where it goes.
        setting = "; a run's settings go in its file config/RUN.toml" if not (where or hint) else ""
        raise ConfigError(
            f"config: unknown key {'.'.join(filter(None, [where, unknown]))!r}{hint}; known "
            f"keys{' of ' + where if where else ''}: {', '.join(known)}{setting}"
        )
    about = error.schema.get("description")
    value = f" {where} = {error.instance!r}" if where else ""
    raise ConfigError(f"config{value}: {error.message}" + (f" ({about})" if about else ""))


def run_names(value: Any) -> list[str]:
    """The runs of config `runs`: a list, or names separated by commas (runs=a,b); each checked
    (it is a path and a shell word), each once, at least one."""
    names = value if isinstance(value, list) else str(value).split(",")
    runs = list(dict.fromkeys(check_run_name(str(n).strip()) for n in names if str(n).strip()))
    if not runs:
        raise ConfigError(f"runs = {value!r}: expected at least one run name (config/NAME.toml)")
    return runs


# What a TOML basic string cannot hold as itself: the quote, the backslash and the control
# characters but tab (toml.io/en/v1.0.0#string). Every other character is written as itself, in
# UTF-8: json.dumps would write U+1F600 as the surrogate pair \ud83d\ude00, which TOML lacks.
_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
                 "\r": "\\r"}  # fmt: skip
_TOML_ESCAPED = re.compile(r'["\\\x00-\x1f\x7f]')


def _toml_escape(m: re.Match[str]) -> str:
    return _TOML_ESCAPES.get(m[0], f"\\u{ord(m[0]):04x}")


def _toml_value(v: Any) -> str:
    """v as a TOML value (a basic string, a number, a boolean or an array) that tomllib reads
    back equal, every string character for character."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return '"' + _TOML_ESCAPED.sub(_toml_escape, v) + '"'
    return repr(v)


def dump(cfg: Config) -> str:
    """The whole resolved config as TOML, loadable by `load`."""
    lines = []
    for name, values in sections(cfg, SECTIONS).items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


def describe(names: typing.Iterable[str] = SECTIONS) -> str:
    """Every key of the named sections with its type, default, meaning and, where the values are
    fixed, its choices (for --help); a note when the stage reads only some sections."""
    names = list(names)
    lines = ["config keys (set in the TOML file or as section.key=value):"]
    for name in names:
        cls = SECTIONS[name]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            tname = "list[str]" if typing.get_origin(tp) is tuple else tp.__name__
            lines.append(f"  {name}.{f.name} ({tname}, default {_toml_value(f.default)})")
            lines.append(f"      {f.metadata['help']}")
            if f.metadata.get("choices"):
                lines.append(f"      choices: {', '.join(map(str, f.metadata['choices']))}")
    if set(names) != set(SECTIONS):
        others = ", ".join(f"[{n}]" for n in SECTIONS if n not in names)
        lines.append(f"(a run's file may hold {others} too: this stage does not read them)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser, names: typing.Iterable[str]) -> None:
    """--config FILE and section.key=value overrides; the key list goes into --help."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = describe(names)
    parser.add_argument("--config", type=Path, help="TOML file of a run (config/NAME.toml)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="overrides, applied after the file",
    )


def from_args(
    args: argparse.Namespace, parser: argparse.ArgumentParser, registry: bool = True
) -> Config:
    """Load the config named by parsed args; a bad config exits with the message (code 2).
    registry=False for a stage that reads no data (see load)."""
    try:
        return load(args.config, args.overrides, registry)
    except ConfigError as e:
        parser.exit(2, f"{parser.prog}: config error: {e}\n")
