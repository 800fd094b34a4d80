"""The config's schema: every section and setting with its default, help, role and check.

Add a setting here, beside its peers; its role (what an edit changes) places it in every identity
(config.data_id, checkpoint_id, program_config) and docs/workflow.md's rerun table. Stdlib only.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Role:
    """What editing a setting changes, declared at the field (as Marin's `versioned(...)`)."""

    name: str
    data: bool  # names the prepared data (data_id), and through it the checkpoint
    resume: bool  # names the checkpoint a run may resume (checkpoint_id): an edit starts afresh
    program: bool  # reaches the compiled train and eval steps: an edit recompiles
    says: str  # what an edit changes, in words


SOURCE = Role("source", True, True, False, "what is downloaded, and all that follows")
DATA = Role("data", True, True, False, "the prepared data, and all that follows")
PROGRAM = Role("program", False, True, True, "the compiled steps and the checkpoint's identity")
RESUME = Role("resume", False, True, False, "the checkpoint's identity, not the compiled steps")
SCHEDULE = Role("schedule", False, False, True, "only the learning rate from the step resumed")
RUNTIME = Role("runtime", False, False, True, "only how the steps run: the same values")
OUTPUT = Role("output", False, False, False, "only its stage's outputs, not the steps")
NOTHING = Role("nothing", False, False, False, "nothing that is computed")
ROLES = (SOURCE, DATA, PROGRAM, RESUME, SCHEDULE, RUNTIME, OUTPUT, NOTHING)
# A field declared without a role is in every identity: forgetting the mark costs a fresh start
# and a recompile, never a resume or a compiled step that ignores the setting (a test refuses it).
UNMARKED = Role("unmarked", True, True, True, "not declared: everything, to be safe")

Check = tuple[Callable[[Any], bool], str]  # a test of a field's value, and what it expects
POSITIVE: Check = (lambda v: v > 0, "> 0")
FRACTION: Check = (lambda v: 0 <= v < 1, "in [0, 1)")
SHARE: Check = (lambda v: 0 < v <= 1, "in (0, 1]")
SEED: Check = (lambda v: 0 <= v < 2**32, f"0 to {2**32 - 1} (a JAX key holds 32 bits)")


def _at_least(low: int, note: str = "") -> Check:
    return (lambda v: v >= low, f">= {low}" + (f" ({note})" if note else ""))


def _f(
    default: Any,
    help: str,
    role: Role = UNMARKED,
    choices: tuple | None = None,
    check: Check | None = None,
) -> Any:
    """A config field: its default, one or two lines of help, its role, and its own check
    (choices: the values it may take; for a list, each item's)."""
    meta = {"help": help, "role": role, "choices": choices, "check": check}
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


# A section's rules across fields: (holds, key, what is expected) each.
Rules = list[tuple[bool, str, str]]


class Section:
    def rules(self, cfg: Config) -> Rules:
        """The section's rules across fields (and sections), checked after every field's own."""
        return []


CLEANING = ("normalize_newlines", "strip", "drop_short")


@dataclass(frozen=True)
class DataConfig(Section):
    # fmt: off
    dataset: str = _f("tinyshakespeare", "dataset name in the registry (nanogptx.datasets)", SOURCE)
    cleaning: tuple[str, ...] = _f(
        ("normalize_newlines",), "cleaning functions applied to each document, in order", DATA,
        CLEANING,
    )
    min_chars: int = _f(0, "drop_short drops documents of fewer characters", DATA,
                        check=_at_least(0))
    decode_errors: str = _f(
        "strict", "bytes that are not UTF-8 (or JSON lone surrogates): strict (an error naming "
        "file and offset or line) or replace (U+FFFD)", DATA, ("strict", "replace"),
    )
    split: str = _f(
        "fraction", "fraction: the last val_fraction of the text is val (nanoGPT); first_docs: "
        "the first val_docs documents; files: files named *val*", DATA,
        ("fraction", "first_docs", "files"),
    )
    val_fraction: float = _f(0.1, "share of the text that is val with split = fraction", DATA,
                             check=(lambda v: 0 < v < 1, "between 0 and 1"))
    val_docs: int = _f(0, "leading documents that are val with split = first_docs", DATA,
                       check=_at_least(0))
    max_docs: int = _f(0, "read at most this many documents (0: all); for quick looks", DATA,
                       check=_at_least(0))
    shard_tokens: int = _f(100_000_000, "tokens per shard", DATA, check=POSITIVE)
    shard_format: str = _f("npy", "shard file format", DATA, ("npy", "parquet"))
    allow_unverified: bool = _f(
        False, "accept a download whose sha256 is neither pinned nor announced by the server",
        NOTHING,
    )
    # fmt: on

    def rules(self, cfg: Config) -> Rules:
        return [
            (
                self.split != "first_docs" or self.val_docs > 0,
                "data.val_docs",
                "> 0 when data.split = first_docs",
            )
        ]


@dataclass(frozen=True)
class TokenizerConfig(Section):
    # fmt: off
    name: str = _f("char", "char (vocabulary built from the data) or gpt2 (tiktoken)", DATA,
                   ("char", "gpt2"))
    # fmt: on


# Tokens per micro-batch: a program indexes its positions in int32 (the loss's chunks); and per
# step, the same bound (128x the largest published batches) keeps auto's search for a divisor
# of the step's rows short.
MAX_TOKENS = 2**31 - 1
# cuDNN's flash attention (JAX 0.10): head widths that are a multiple of this, and at most this
# on any GPU (256 from compute capability 9.0, 128 before: runtime.cudnn_refusal).
CUDNN_HEAD_MULTIPLE, CUDNN_MAX_HEAD = 8, 256


@dataclass(frozen=True)
class ModelConfig(Section):
    # fmt: off
    n_layer: int = _f(12, "transformer blocks", PROGRAM, check=POSITIVE)
    n_head: int = _f(12, "attention heads per block", PROGRAM, check=POSITIVE)
    n_embd: int = _f(768, "residual stream width", PROGRAM, check=POSITIVE)
    block_size: int = _f(1024, "context length in tokens", PROGRAM, check=POSITIVE)
    vocab_size: int = _f(0, "tokens the model predicts (0: the tokenizer's)", PROGRAM,
                         check=_at_least(0, "0: the tokenizer's"))
    vocab_multiple: int = _f(
        0, "round the embedding rows up to a multiple of this (64 or 128: a GPU speed knob); "
        "the padded rows are masked and export strips them", PROGRAM,
        check=_at_least(0, "0: no padding"),
    )
    init_from: str = _f(
        "scratch", "scratch; gpt2, gpt2-medium, gpt2-large or gpt2-xl (OpenAI's weights), or a "
        "directory in HF's GPT-2 layout: it sets the architecture keys", PROGRAM,
    )
    dropout: float = _f(0.0, "dropout rate in training", PROGRAM, check=FRACTION)
    bias: bool = _f(True, "biases in Linear and LayerNorm layers, as GPT-2", PROGRAM)
    position: str = _f(
        "learned", "learned absolute position embeddings (GPT-2), or rope: rotary embeddings of "
        "q and k", PROGRAM, ("learned", "rope"),
    )
    rope_theta: float = _f(10_000.0, "rope's base: frequencies theta^(-2i/K)", PROGRAM,
                           check=POSITIVE)
    norm: str = _f("layernorm", "every norm: layernorm (GPT-2) or rmsnorm (no centring, no bias)",
                   PROGRAM, ("layernorm", "rmsnorm"))
    norm_gain: bool = _f(True, "learned gains (scales) in the norms; false: none", PROGRAM)
    qk_norm: bool = _f(False, "queries and keys normalised per head before attention", PROGRAM)
    activation: str = _f(
        "gelu", "MLP: gelu (nanoGPT), gelu_tanh (HF GPT-2), relu2 (modded-nanogpt), swiglu "
        "(width 8 D / 3 rounded up to 64)", PROGRAM, ("gelu", "gelu_tanh", "relu2", "swiglu"),
    )
    mlp_width: int = _f(0, "MLP hidden width (0: 4 n_embd, or swiglu's rule)", PROGRAM,
                        check=_at_least(0, "0: the activation's rule"))
    n_kv_head: int = _f(0, "key/value heads (grouped-query attention); 0: n_head", PROGRAM,
                        check=_at_least(0, "0: n_head"))
    tie_embeddings: bool = _f(True, "the output head is wte transposed (GPT-2)", PROGRAM)
    logit_softcap: float = _f(0.0, "cap * tanh(logits / cap) on the output logits (0: none)",
                              PROGRAM, check=_at_least(0, "0: none"))
    z_loss: float = _f(0.0, "coefficient of PaLM's auxiliary loss mean(log(Z)^2) (0: none)",
                       PROGRAM, check=_at_least(0))
    kernels: str = _f(
        "auto", "fast (hand-written gradients), reference (JAX's own: jvp and hessian work) or "
        "auto (fast); the same values", RUNTIME, ("auto", "fast", "reference"),
    )
    attention: str = _f(
        "auto", "einsum, xla or cudnn (16-bit compute, head width a multiple of 8); auto: einsum "
        "on CPU, cudnn where it runs on GPU, else xla", RUNTIME, ("auto", "einsum", "xla", "cudnn"),
    )
    remat: str = _f(
        "none", "recompute in the backward: none, block (each block: least memory) or dots (all "
        "but the matmuls); the same values", RUNTIME, ("none", "block", "dots"),
    )
    # fmt: on

    def rules(self, cfg: Config) -> Rules:
        K, gpt2 = self.n_embd // self.n_head, GPT2_ARCHITECTURE["vocab_size"]
        tok = cfg.tokenizer.name
        return [
            (
                tok != "gpt2" or self.vocab_size == 0 or self.vocab_size >= gpt2,
                "model.vocab_size",
                f"0 or at least {gpt2}, the gpt2 tokenizer's vocabulary",
            ),
            (
                self.init_from not in GPT2_CHECKPOINTS or tok == "gpt2",
                "tokenizer.name",
                f"gpt2 with model.init_from = {self.init_from!r} (its vocabulary is GPT-2's)",
            ),
            (
                self.n_embd % self.n_head == 0,
                "model.n_embd",
                f"a multiple of model.n_head = {self.n_head}",
            ),
            (
                self.n_head % (self.n_kv_head or self.n_head) == 0,
                "model.n_kv_head",
                f"a divisor of model.n_head = {self.n_head}",
            ),
            (
                self.position != "rope" or K % 2 == 0,
                "model.n_head",
                f"a head width n_embd / n_head = {K} that is even, for rope",
            ),
            (
                self.attention != "cudnn" or cfg.train.compute_dtype != "float32",
                "model.attention",
                "auto, einsum or xla with train.compute_dtype = 'float32' (cuDNN's attention runs "
                "bfloat16 or float16)",
            ),
            (
                self.attention != "cudnn" or (K % CUDNN_HEAD_MULTIPLE == 0 and K <= CUDNN_MAX_HEAD),
                "model.attention",
                f"auto, einsum or xla with a head width n_embd / n_head = {K} "
                f"(cuDNN's attention needs a multiple of {CUDNN_HEAD_MULTIPLE} of at most "
                f"{CUDNN_MAX_HEAD}, and at most 128 before compute capability 9.0)",
            ),
        ]


@dataclass(frozen=True)
class TrainConfig(Section):
    # fmt: off
    seed: int = _f(1337, "seed of parameters, batches and dropout", RESUME, check=SEED)
    batch_size: int = _f(
        12, 'sequences per micro-batch, over all devices; 0 (or "auto"): the largest whose '
        "programs fit the devices' memory (python -m nanogptx.plan)", PROGRAM,
        check=_at_least(0, "0: auto"),
    )
    total_batch_tokens: int = _f(
        0, "tokens per optimizer step, accumulated over micro-batches (0: one micro-batch)",
        PROGRAM, check=(lambda v: v <= MAX_TOKENS, f"at most 2^31 - 1 = {MAX_TOKENS}"),
    )
    max_iters: int = _f(600_000, "optimizer steps", OUTPUT,
                        check=_at_least(0, "0: no step, the initial model"))
    learning_rate: float = _f(6e-4, "peak learning rate", PROGRAM, check=POSITIVE)
    min_lr: float = _f(6e-5, "learning rate at the end of the decay", PROGRAM)
    warmup_iters: int = _f(2000, "steps of linear warmup", PROGRAM, check=_at_least(0))
    lr_decay_iters: int = _f(600_000, "step where the decay reaches min_lr", SCHEDULE,
                             check=_at_least(0))
    decay_lr: bool = _f(True, "warmup, then lr_schedule; false: learning_rate from step 0",
                        PROGRAM)
    optimizer: str = _f(
        "adamw", "adamw, muon (orthogonalised momentum for hidden matrices, AdamW elsewhere), "
        "lion (~10x smaller lr) or adafactor (~10x larger)", PROGRAM,
        ("adamw", "muon", "lion", "adafactor"),
    )
    muon_learning_rate: float = _f(0.02, "muon's peak learning rate of the hidden matrices",
                                   PROGRAM, check=POSITIVE)
    muon_momentum: float = _f(0.95, "muon's momentum (Nesterov)", PROGRAM, check=FRACTION)
    weight_decay: float = _f(0.1, "weight decay, on matrices only", PROGRAM, check=_at_least(0))
    weight_decay_mode: str = _f(
        "decoupled", "decoupled: lr * weight_decay * p per step (AdamW); independent: of the "
        "peak learning rate (Wortsman et al. 2023)", PROGRAM, ("decoupled", "independent"),
    )
    lr_schedule: str = _f(
        "cosine", "after the warmup: cosine (nanoGPT), linear, wsd (a linear cooldown over the "
        "last cooldown_frac) or constant", SCHEDULE, ("cosine", "wsd", "linear", "constant"),
    )
    cooldown_frac: float = _f(0.2, "share of lr_decay_iters that wsd's cooldown takes",
                              SCHEDULE, check=SHARE)
    beta1: float = _f(0.9, "beta1 of adamw, lion and muon's AdamW part", PROGRAM, check=FRACTION)
    beta2: float = _f(0.95, "beta2 of adamw, lion and muon's AdamW part", PROGRAM,
                      check=FRACTION)
    grad_clip: float = _f(1.0, "clip gradients to this global norm (0: none)", PROGRAM,
                          check=_at_least(0))
    on_divergence: str = _f(
        "fail", "a NaN or inf loss or gradient: fail (an error) or stop (a sweep's points: "
        "also a loss above step 0's for divergence_steps; a result)", OUTPUT, ("fail", "stop"),
    )
    divergence_steps: int = _f(50, "consecutive steps after the warmup above step 0's loss that "
                               "make a divergence (stop)", OUTPUT, check=POSITIVE)
    eval_interval: int = _f(2000, "evaluate every this many steps", OUTPUT, check=POSITIVE)
    eval_iters: int = _f(200, "validation (and train-estimate) batches per evaluation", OUTPUT,
                         check=POSITIVE)
    eval_only: bool = _f(False, "evaluate once and stop", OUTPUT)
    batch_order: str = _f("random", "random windows (nanoGPT) or sequential windows", RESUME,
                          ("random", "sequential"))
    compute_dtype: str = _f("float32", "dtype of activations and matmuls", PROGRAM,
                            ("float32", "bfloat16", "float16"))
    sharding: str = _f("dp", "dp: batch sharded, parameters replicated; fsdp: parameters too",
                       RUNTIME, ("dp", "fsdp"))
    checkpoint_interval: int = _f(1000, "save a checkpoint every this many steps (0: only final)",
                                  OUTPUT, check=_at_least(0))
    resume: str = _f(
        "latest", "latest: resume from the newest checkpoint (damaged: an error); latest_valid: "
        "from the newest intact one", OUTPUT, ("latest", "latest_valid"),
    )
    keep_checkpoints: int = _f(2, "checkpoints kept on disk", OUTPUT, check=POSITIVE)
    peak_flops: float = _f(0.0, "a device's peak FLOP/s for MFU (0: a table by device kind)",
                           OUTPUT, check=_at_least(0))
    measure_peak: bool = _f(False, "measure the peak of a device the table lacks (else no MFU)",
                            OUTPUT)
    profile_start: int = _f(0, "first step of a jax.profiler trace (0: no trace)", OUTPUT,
                            check=_at_least(0))
    profile_steps: int = _f(5, "steps in the profiler trace", OUTPUT, check=POSITIVE)
    # fmt: on

    def rules(self, cfg: Config) -> Rules:
        block = cfg.model.block_size
        micro = max(self.batch_size, 1) * block
        tokens = self.total_batch_tokens
        return [
            (
                self.batch_size > 0 or (tokens > 0 and tokens % block == 0),
                "train.total_batch_tokens",
                f"a multiple of model.block_size = {block} with "
                "train.batch_size = 0 (auto divides the rows of a step into micro-batches)",
            ),
            (
                micro <= MAX_TOKENS,
                "train.batch_size",
                f"at most {MAX_TOKENS // block} (a micro-batch holds at most 2^31 - 1 tokens: "
                f"batch_size * model.block_size = {micro})",
            ),
            (
                tokens >= 0 and tokens % micro == 0,
                "train.total_batch_tokens",
                f"0 or a multiple of train.batch_size * model.block_size = {micro}",
            ),
            (
                0 <= self.min_lr <= self.learning_rate,
                "train.min_lr",
                f"between 0 and train.learning_rate = {self.learning_rate}",
            ),
            (
                not self.decay_lr or self.lr_decay_iters > self.warmup_iters,
                "train.lr_decay_iters",
                f"> train.warmup_iters = {self.warmup_iters}",
            ),
            (
                self.decay_lr or self.lr_schedule in ("cosine", "constant"),
                "train.decay_lr",
                f"true with train.lr_schedule = {self.lr_schedule!r} (false is a "
                "constant learning rate from step 0, which no schedule follows; lr_schedule = "
                "'constant' warms up first)",
            ),
        ]


@dataclass(frozen=True)
class SampleConfig(Section):
    # fmt: off
    start: str = _f("\n", "prompt text, or FILE:path to read it from a file", OUTPUT,
                    check=(lambda v: v != "FILE:", "text, or FILE:path with a path"))
    num_samples: int = _f(10, "samples generated together as one batch", OUTPUT, check=POSITIVE)
    max_new_tokens: int = _f(500, "tokens generated per sample", OUTPUT, check=POSITIVE)
    temperature: float = _f(0.8, "softmax temperature", OUTPUT, check=POSITIVE)
    top_k: int = _f(200, "keep only the k most likely tokens (0: all)", OUTPUT, check=_at_least(0))
    top_p: float = _f(1.0, "keep the smallest set of tokens with this total probability", OUTPUT,
                      check=SHARE)
    seed: int = _f(1337, "sampling seed", OUTPUT, check=SEED)
    window_shift: int = _f(
        0, "tokens dropped when a learned-position context outgrows block_size (1: nanoGPT's "
        "crop; 0: block_size // 4)", OUTPUT, check=_at_least(0),
    )
    # fmt: on

    def rules(self, cfg: Config) -> Rules:
        block = cfg.model.block_size
        return [
            (
                self.window_shift <= block,
                "sample.window_shift",
                f"0 (block_size // 4) to model.block_size = {block}",
            )
        ]


@dataclass(frozen=True)
class EvalConfig(Section):
    # fmt: off
    tasks: tuple[str, ...] = _f(
        ("val_loss",), "eval tasks, each a file config/tasks/NAME.toml (val_loss, hellaswag, ...)",
        OUTPUT,
    )
    batch_size: int = _f(8, "windows (split_loss) or items (the other kinds) per batch", OUTPUT,
                         check=POSITIVE)
    max_windows: int = _f(0, "split_loss: score at most this many windows (0: the whole split)",
                          OUTPUT, check=_at_least(0, "0: all"))
    max_items: int = _f(0, "score this many items of each task (llm.c's multiple_choice: the "
                        "first; CORE's: a fixed shuffle's first, and a cut CORE) (0: all)",
                        OUTPUT, check=_at_least(0, "0: all"))
    # fmt: on


@dataclass(frozen=True)
class LoggingConfig(Section):
    # fmt: off
    log_interval: int = _f(10, "print and record metrics every this many steps", OUTPUT,
                           check=POSITIVE)
    stats_interval: int = _f(
        100, "record diagnostics (kind stats: per-layer RMS of parameters, gradients, updates; "
        "attention logit max; log Z) every this many steps", OUTPUT, check=_at_least(0, "0: none"),
    )
    wandb_mode: str = _f("disabled", "wandb logging", OUTPUT, ("disabled", "offline", "online"))
    wandb_project: str = _f("nanogptx", "wandb project", OUTPUT)
    wandb_run_name: str = _f("", "wandb run name (empty: the run's name)", OUTPUT)
    # fmt: on


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


def role(f: dataclasses.Field) -> Role:
    return f.metadata.get("role", UNMARKED)


def keys_with(section: str, want: Callable[[Role], bool]) -> tuple[str, ...]:
    """The keys of a section whose role `want` accepts, in definition order."""
    return tuple(f.name for f in dataclasses.fields(SECTIONS[section]) if want(role(f)))


# The identity sets, derived from the roles. The model's settings of how it runs, not what it
# computes: a checkpoint resumes under any of them.
RUNTIME_KEYS = keys_with("model", lambda r: r is RUNTIME)
# Train settings a resumed run must share with its checkpoint (with the model and the data).
RESUME_KEYS = keys_with("train", lambda r: r.resume)
# Data settings that do not change the prepared bytes, so not the prepared data's identity.
NOT_DATA_IDENTITY = tuple(
    f"{name}.{k}"
    for name in STAGE_SECTIONS["prepare"]
    for k in keys_with(name, lambda r: not r.data)
)

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


# ---- docs/workflow.md's rerun table (rows for settings), from the roles: python -m nanogptx.schema
STAGES = ("download", "prepare", "train", "sample", "eval")


def _keys_cell(name: str, keys: tuple[str, ...]) -> str:
    """`[model]`, `[model]` but `a`, `b`, or `train.a`, `train.b`: the shortest that is exact."""
    every = [f.name for f in dataclasses.fields(SECTIONS[name])]
    if len(keys) == len(every):
        return f"`[{name}]`"
    if len(keys) > len(every) / 2:
        return f"`[{name}]` but " + ", ".join(f"`{k}`" for k in every if k not in keys)
    return ", ".join(f"`{name}.{k}`" for k in keys)


def _reruns(r: Role, stage: str) -> list[str]:
    """What an edit of a setting of this role, read by this stage, reruns, stage by stage."""
    train = r is not NOTHING and (r.data or stage == "train")
    return [
        "yes (new dataset)" if r is SOURCE else "",
        "yes" if r.data else "",
        ("yes, afresh" if r.resume else "yes, resumed") if train else "",
        "yes" if train or (stage == "sample" and r is not NOTHING) else "",
        "yes" if train or (stage == "eval" and r is not NOTHING) else "",
    ]


def rerun_rows() -> list[str]:
    """One row per role and stage: its settings, and the stages an edit of one reruns."""
    rows = []
    for r in ROLES:
        for stage, names in STAGE_SECTIONS.items():
            keys = {n: keys_with(n, lambda x, r=r: x is r) for n in names}
            cells = "; ".join(_keys_cell(n, ks) for n, ks in keys.items() if ks)
            if cells:
                marks = [f" {m} " if m else " " for m in _reruns(r, stage)]
                rows.append("|".join(["", f" {cells} ({r.name}: {r.says}) ", *marks, ""]))
    return rows


def rerun_table() -> str:
    head = f"| you edit | {' | '.join(STAGES)} |"
    return "\n".join([head, "|---" * (len(STAGES) + 1) + "|", *rerun_rows()])


def main(argv: list[str] | None = None) -> None:
    from nanogptx import errors

    argparse.ArgumentParser(
        prog="python -m nanogptx.schema",
        description="Print docs/workflow.md's rerun table (its rows for settings, made from "
        "each setting's role) as Markdown, to paste there; a test checks the page has it.",
    ).parse_args(argv)
    with errors.reader_may_stop():
        print(rerun_table())


if __name__ == "__main__":
    main()
