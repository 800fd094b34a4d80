"""Where a training starts: the checks of config against data and devices before anything is
allocated, and the state restored from the latest checkpoint (refused where it was made with
settings a resume must keep) or initialised (from scratch or pretrained weights)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from nanogptx import checkpoint, config, hf, loader, model, optim, provenance, schema
from nanogptx.config import Config, TrainConfig
from nanogptx.logbook import log
from nanogptx.steps import Layout, State, TrainError, place


def check_outputs(out_dir: Path, ckpt_dir: Path, inputs: list[tuple[str, Any]]) -> None:
    """--out and --checkpoints apart from the inputs and from each other."""
    for path, flag in ((out_dir, "--out"), (ckpt_dir, "--checkpoints")):
        provenance.check_apart(path, flag, inputs)
    if out_dir.resolve() == ckpt_dir.resolve():
        raise provenance.OutputError(
            f"--out {out_dir} and --checkpoints {ckpt_dir} are one directory: give each its own"
        )


def resolve_vocab(cfg: Config, tokenizer_vocab: int) -> Config:
    """cfg with model.vocab_size resolved: the tokenizer's where the run leaves it 0."""
    vocab = cfg.model.vocab_size or tokenizer_vocab
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))


def check_setup(cfg: Config, data: loader.Prepared, n_devices: int) -> int:
    """Config against data and devices; returns the embedding rows (model.vocab_size, or the
    tokenizer's, rounded up to model.vocab_multiple)."""
    m, t = cfg.model, cfg.train
    V = m.vocab_size or data.vocab_size
    if V < data.vocab_size:
        raise TrainError(
            f"model.vocab_size = {m.vocab_size} is smaller than the tokenizer's "
            f"{data.vocab_size} ({data.dir / 'manifest.json'})"
        )
    for split in ("train", "val"):
        n = data.split(split).n_tokens
        if n < m.block_size + 1:
            raise TrainError(
                f"model.block_size = {m.block_size} is longer than the {split} split of "
                f"{data.dir} ({n} tokens): expected at most {n - 1}"
            )
    if t.batch_size % n_devices:
        raise TrainError(
            f"train.batch_size = {t.batch_size} is not divisible by the {n_devices} devices"
        )
    return model.vocab_rows(dataclasses.replace(m, vocab_size=V))


def init_file(cfg: Config, init: Path | None) -> Path | None:
    """The weights file of a pretrained model.init_from, from --init or the directory it
    names; None for scratch."""
    m = cfg.model
    if m.init_from == "scratch":
        return None
    if init is None and config.init_dataset(m.init_from):
        raise TrainError(
            f"model.init_from = {m.init_from!r}: pass --init, the directory the download stage "
            f"fetched dataset {config.init_dataset(m.init_from)} into"
        )
    path = Path(init or m.init_from)
    return path / hf.WEIGHTS if path.is_dir() else path


def init_weights(cfg: Config, path: Path) -> model.Params:
    """The pretrained weights at path (numpy); a missing or wrong checkpoint is a TrainError."""
    try:
        return hf.load_params(path, cfg.model)
    except hf.HFError as e:
        raise TrainError(f"model.init_from = {cfg.model.init_from!r}: {e}") from None


def resume_mismatch(meta: dict[str, Any], cfg: Config, manifest_sha: str, V: int) -> list[str]:
    """The settings in which a checkpoint differs from this run where a resume must not."""
    saved, now = meta["config"], config.sections(cfg, config.STAGE_SECTIONS["train"])
    keys = [  # checkpoint_id's settings, the roles read now: an unmarked one is refused too
        f"{name}.{k}"
        for name in now
        for k in schema.keys_with(name, lambda r: r.resume)
        if saved.get(name, {}).get(k) != now[name][k]
    ]
    if meta["manifest_sha256"] != manifest_sha:
        keys.append("data (manifest sha256)")
    if meta["vocab_size"] != V:
        keys.append("vocab_size")
    return keys


def changed_settings(meta: dict[str, Any], cfg: Config) -> list[str]:
    """The settings this run changes from its checkpoint's, as 'train.max_iters: 200 -> 300'."""
    saved = meta["config"]
    out = []
    for name, now in config.sections(cfg, ("model", "train", "logging")).items():
        before = saved.get(name, {})
        out += [
            f"{name}.{k}: {before[k]!r} -> {v!r}" for k, v in now.items() if before.get(k, v) != v
        ]
    return out


def why_afresh(ckpt_dir: Path, cfg: Config) -> str | None:
    """Why a run with checkpoints beside ckpt_dir starts from step 0: under Snakemake those are
    the run's checkpoints for other settings (one directory per checkpoint_id); name the
    settings in which the newest of them differs."""
    newest = [
        found[-1][1]
        for d in ckpt_dir.parent.iterdir()
        if d != ckpt_dir and (found := checkpoint.list_checkpoints(d))
    ]
    if not newest:
        return None
    path = max(newest, key=lambda p: p.stat().st_mtime)
    try:
        changed = changed_settings(json.loads((path / checkpoint.META_FILE).read_text()), cfg)
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    return (
        f"starting from step 0: {ckpt_dir} has no checkpoint; the newest beside it, {path}, was "
        f"made with other settings ({', '.join(changed) or 'other data'})"
    )


def schedule_change(meta: dict[str, Any], t: TrainConfig, step: int) -> str | None:
    """How the learning rate from `step` on differs from the checkpoint's schedule, if it does."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = dataclasses.replace(
        t, **{k: v for k, v in meta["config"]["train"].items() if k in fields}
    )
    before, now = optim.get_lr(step, saved), optim.get_lr(step, t)
    changed = [
        f"train.{k} {getattr(saved, k)!r} -> {getattr(t, k)!r}"
        for k in optim.SCHEDULE_KEYS
        if getattr(saved, k) != getattr(t, k)
    ]
    if before == now and not changed:
        return None
    return (
        f"the learning-rate schedule changed ({', '.join(changed)}): from step {step} on it "
        f"follows this run's, lr {now:.3e} at step {step} (the checkpoint's schedule: "
        f"{before:.3e})"
    )


def wandb_run_id(ckpt_dir: Path, meta: dict[str, Any] | None) -> str:
    """The id kept with the checkpoints: from the checkpoint, else the file beside them."""
    path = ckpt_dir / "wandb_run_id"
    if meta and meta.get("wandb_run_id"):
        return meta["wandb_run_id"]
    if path.is_file():
        return path.read_text().strip()
    run_id = os.urandom(6).hex()
    if jax.process_index() == 0:
        provenance.write_bytes_atomic(path, run_id.encode())
    return run_id


# ---------------------------------------------------------------- restore or initialise


@dataclass(frozen=True)
class Start:
    """Where a training starts: the train state on the mesh, the step it holds, the metrics
    records before it, the dropout key, the wandb run id kept with the checkpoints, and what it
    started from: the checkpoint resumed (path, meta) or the pretrained weights (init_path)."""

    state: State
    step: int
    records: list[dict[str, Any]]
    key_dropout: jax.Array
    run_id: str
    path: Path | None = None  # the checkpoint resumed from; None: a fresh start
    meta: dict[str, Any] | None = None
    init_path: Path | None = None
    init_sha: str | None = None


def restore_or_init(
    cfg: Config, data: loader.Prepared, lay: Layout, ckpt_dir: Path, init: Path | None
) -> Start:
    """Resume from the latest checkpoint, or start fresh (from scratch or pretrained weights,
    whose sha256 is an input of the run either way)."""
    m, t = cfg.model, cfg.train
    key_params, key_dropout = jax.random.split(jax.random.key(t.seed))
    init_path = init_file(cfg, init)
    try:
        init_sha = None if init_path is None else provenance.sha256_file(init_path)
    except FileNotFoundError:
        raise TrainError(f"model.init_from = {m.init_from!r}: {init_path} does not exist") from None
    found = checkpoint.restore(ckpt_dir, t.resume, t.max_iters, log)
    if found is None:
        if ckpt_dir.parent.is_dir() and (note := why_afresh(ckpt_dir, cfg)):
            log(note)
        state = initial_state(cfg, lay, key_params, init_path, init_sha)
        run_id = wandb_run_id(ckpt_dir, None)
        return Start(state, 0, [], key_dropout, run_id, init_path=init_path, init_sha=init_sha)
    path, tensors, meta = found
    if diff := resume_mismatch(meta, cfg, data.manifest_sha256, lay.V):
        raise TrainError(
            f"checkpoint {path} was made with different settings ({', '.join(diff)}); "
            f"restore them, or delete {ckpt_dir} to start afresh"
        )
    host = {
        "params": checkpoint.unflatten_like(lay.state_abs["params"], tensors, "params.", str(path)),
        "opt": checkpoint.unflatten_like(lay.state_abs["opt"], tensors, "opt.", str(path)),
    }
    key_dropout = jax.random.wrap_key_data(np.asarray(meta["rng"]["dropout_key"], np.uint32))
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    start = Start(
        place(host, lay.state_sh),
        meta["step"],
        records,
        key_dropout,
        wandb_run_id(ckpt_dir, meta),
        path,
        meta,
        init_path,
        init_sha,
    )
    log_resume(cfg, lay, start)
    return start


def initial_state(
    cfg: Config, lay: Layout, key: jax.Array, init_path: Path | None, init_sha: str | None
) -> State:
    """A fresh train state on the mesh: from scratch (key), or the weights at init_path."""
    optimizer = optim.make(cfg.train)
    if init_path is None:
        init_fn = lambda k: model.init_params(cfg.model, lay.V, k)  # noqa: E731
        return jax.jit(
            lambda k: {"params": (p := init_fn(k)), "opt": optimizer.init(p)},
            out_shardings=lay.state_sh,
        )(key)
    pretrained = checkpoint.flatten(init_weights(cfg, init_path))
    params_abs = lay.state_abs["params"]
    params = place(
        checkpoint.unflatten_like(params_abs, pretrained, where=str(init_path)),
        lay.state_sh["params"],
    )
    opt = jax.jit(optimizer.init, out_shardings=lay.state_sh["opt"])(params)
    log(f"initialised from {cfg.model.init_from} ({init_path}, sha256 {init_sha[:12]}...)")
    return {"params": params, "opt": opt}


def log_resume(cfg: Config, lay: Layout, start: Start) -> None:
    """Say where the run resumes, and what changed since its checkpoint."""
    meta, t = start.meta, cfg.train
    log(f"resumed from {start.path} at step {start.step} of {t.max_iters}")
    if changed := changed_settings(meta, cfg):
        log(f"settings changed since that checkpoint: {', '.join(changed)}")
    if note := schedule_change(meta, t, start.step):
        log(note)
    before = meta.get("data", {}).get("schedule", {}).get("batch_size", lay.B)
    if before != lay.B:
        log(
            f"micro-batch {before} -> {lay.B} (train.batch_size = 0: auto, on these devices): "
            f"the same {lay.tokens_per_step} tokens per step; from step {start.step} on each "
            f"step's rows are drawn as {lay.A} micro-batches of {lay.B}, as a run started here "
            "would"
        )


def checkpoint_meta(
    cfg: Config, data: loader.Prepared, lay: Layout, start: Start, step: int, above: int | None
) -> dict[str, Any]:
    """What a checkpoint at step keeps besides the state: what restore_or_init reads back."""
    return {
        "config": config.sections(cfg, ("model", "train", "logging")),
        "manifest_sha256": data.manifest_sha256,
        "vocab_size": lay.V,
        "rng": {
            "seed": cfg.train.seed,
            "dropout_key": np.asarray(jax.random.key_data(start.key_dropout)).tolist(),
        },
        "data": {"next_batch": step * lay.A, "schedule": lay.schedule},
        "wandb_run_id": start.run_id,
        "loss_above_L0_since": above,
    }


def save(
    ckpt_dir: Path, step: int, host: State, meta: dict[str, Any], metrics: bytes, t: TrainConfig
) -> None:
    """Write the checkpoint of the train state (numpy) at step, with its meta and metrics."""
    tensors = checkpoint.flatten(host["params"], "params.") | checkpoint.flatten(
        host["opt"], "opt."
    )
    files = {"metrics.jsonl": metrics}
    checkpoint.save(ckpt_dir, step, tensors, meta, files, keep=t.keep_checkpoints)
