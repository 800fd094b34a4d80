"""Train a GPT, resuming from --checkpoints; the optimizer (train.optimizer: adamw, muon, lion,
adafactor) and its schedule after a warmup (train.lr_schedule: cosine, wsd, linear, constant).

    python -m nanogptx.train --config config/shakespeare-char.toml --data data/prepared/<data_id> \
        --out results/<run>/model --checkpoints results/<run>/checkpoints
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from nanogptx import (
    checkpoint,
    config,
    loader,
    logbook,
    microbatch,
    model,
    progress,
    provenance,
    resume,
    runtime,
    steps,
)
from nanogptx.config import Config
from nanogptx.errors import UserError
from nanogptx.logbook import log
from nanogptx.steps import State, TrainError  # noqa: F401 (train.TrainError, as callers name it)


def train(
    cfg: Config,
    data_dir: str | Path,
    out_dir: str | Path,
    ckpt_dir: str | Path,
    init: str | Path | None = None,
    channel: progress.Channel | None = None,
) -> dict[str, Any]:
    """Train (or resume) and write the final model into out_dir; returns a summary. Process 0
    holds both directories (a second training on them is refused at start) and first removes
    what an interrupted run left there."""
    runtime.keep_freed_memory(cfg.tokenizer.name)  # XLA's CPU buffers stay in the heap
    steps.initialize_distributed()
    steps.make_runtime(cfg)  # an impossible one is refused here, before any file is read
    out_dir, ckpt_dir = Path(out_dir), Path(ckpt_dir)
    inputs = [("--data", data_dir), ("--init", init)]
    resume.check_outputs(out_dir, ckpt_dir, inputs)  # before any work
    # The vocabulary from the manifest alone (checked against prepare's record): the
    # micro-batch is chosen, and the programs checked against the devices' memory, before a
    # shard is read or any state allocated.
    manifest = loader.read_manifest(data_dir)
    loader.verify_manifest(data_dir)
    cfg = resume.resolve_vocab(cfg, int(manifest["tokenizer"]["vocab_size"]))
    micro = microbatch.plan_micro_batch(cfg, steps.make_mesh())
    data = loader.open_prepared(data_dir)  # manifest and shard hashes checked here
    resume.check_setup(cfg, data, jax.device_count())
    with contextlib.ExitStack() as held:
        if jax.process_index() == 0:
            for path, flag in ((out_dir, "--out"), (ckpt_dir, "--checkpoints")):
                held_dir = provenance.exclusive(path, "training", flag, inputs, stage="train")
                if removed := held.enter_context(held_dir):
                    names = ", ".join(p.name for p in removed)
                    log(f"removed what an interrupted run left in {path}: {names}")
        init_path = None if init is None else Path(init)
        return _train(cfg, data, out_dir, ckpt_dir, init_path, channel, micro)


@dataclass(frozen=True)
class Run:
    """What the loop and the finish share, fixed for the run."""

    cfg: Config
    data: loader.Prepared
    out_dir: Path
    ckpt_dir: Path
    micro: microbatch.MicroBatch
    lay: steps.Layout
    start: resume.Start
    programs: steps.Programs
    metrics: logbook.Metrics
    record: provenance.Record  # the stage's provenance, finished with the model
    started: float  # perf_counter at the stage's start: eval records' wall_s count from it


def _train(
    cfg: Config,
    data: loader.Prepared,
    out_dir: Path,
    ckpt_dir: Path,
    init: Path | None,
    channel: progress.Channel | None,
    micro: microbatch.MicroBatch,
) -> dict[str, Any]:
    record = provenance.Record.start("train", config.sections(cfg, config.STAGE_SECTIONS["train"]))
    started = time.perf_counter()
    t = cfg.train
    lay = plan_run(cfg, data, micro)
    start = resume.restore_or_init(cfg, data, lay, ckpt_dir, init)
    peak, source = None, ""
    if not t.eval_only:  # the peak MFU is against, and a warning before any compile
        flops = lay.flops_per_token * lay.tokens_per_step
        peak, source = logbook.mfu_peak(cfg, flops, start.step, channel)
    out_dir.mkdir(parents=True, exist_ok=True)
    wandb_run = logbook.start_wandb(cfg, start.run_id, ckpt_dir, out_dir)
    metrics = logbook.Metrics(out_dir / "metrics.jsonl", start.records, wandb_run)
    programs = compile_programs(cfg, lay)
    run = Run(cfg, data, out_dir, ckpt_dir, micro, lay, start, programs, metrics, record, started)
    if t.eval_only:
        losses = evaluate(run, start.state["params"], start.step)
        if metrics.wandb_run is not None:
            metrics.wandb_run.finish()
        return {"step": start.step, "train_loss": losses["train"], "val_loss": losses["val"]}
    saved = start.step if start.path is not None else None  # not saved again
    above = (start.meta or {}).get("loss_above_L0_since")
    show = jax.process_index() == 0
    with progress.steps(t.max_iters, start.step, channel, show) as bar:  # loop closes it
        book = logbook.Logbook(cfg, metrics, bar, ckpt_dir, lay, peak, source, saved, above)
        state, done = loop(run, book)
        done, final = stop(run, book, state, done)
        return finish(run, book, state, done, final)


# ---------------------------------------------------------------- plan and compile


def plan_run(cfg: Config, data: loader.Prepared, micro: microbatch.MicroBatch) -> steps.Layout:
    """The run's layout (shapes and bytes known before any allocation), logged."""
    m, t = cfg.model, cfg.train
    n_dev = jax.device_count()
    V = resume.check_setup(cfg, data, n_dev)
    B, A = micro.batch_size, micro.micro_batches  # train.batch_size, or auto's choice
    mesh = steps.make_mesh()
    state_abs, state_sh = steps.plan_state(cfg, V, mesh)
    rt = steps.make_runtime(cfg)
    rt_stats = runtime.for_diagnostics(rt) if cfg.logging.stats_interval else None
    schedule = loader.schedule(
        data, loader.BatchSpec("train", t.seed, B, m.block_size, t.batch_order), A
    )
    n_params = model.count_params(state_abs["params"], non_embedding=False)
    n_flops_params = model.count_params(state_abs["params"], non_embedding=True)
    flops = model.flops_per_token(m, n_flops_params)
    lay = steps.Layout(
        mesh, V, B, A, m.block_size, state_abs, state_sh, rt, rt_stats, schedule, n_params, flops
    )
    log(
        f"model: {n_params / 1e6:.2f}M parameters ({n_flops_params / 1e6:.2f}M without position "
        f"embeddings), vocab {V}; per device ({t.sharding}, {progress.plural(n_dev, 'device')}): "
        f"parameters {logbook.fmt_bytes(lay.param_bytes)}, optimizer state "
        f"{logbook.fmt_bytes(lay.opt_bytes)}"
    )
    log(f"{lay.tokens_per_step} tokens per step ({A} x {B} x {m.block_size})")
    log(rt.explain(m, jax.default_backend()))
    if rt_stats is not None:
        log(
            f"diagnostics steps (every logging.stats_interval = {cfg.logging.stats_interval}): "
            f"attention logits from a forward of rows 0-{min(steps.STATS_ROWS, B) - 1} "
            f"of the step's first micro-batch, runtime {rt_stats.describe()}"
        )
    return lay


def compile_programs(cfg: Config, lay: steps.Layout) -> steps.Programs:
    t0 = time.perf_counter()
    programs = steps.compile_steps(steps.with_batch(cfg, lay.B), lay.V, lay.A, lay.mesh)
    what = "train, eval and diagnostics" if programs.diagnostics_step else "train and eval"
    log(f"compiled {what} steps in {time.perf_counter() - t0:.1f} s")
    return programs


# ---------------------------------------------------------------- the loop


def evaluate(run: Run, params: Any, step: int) -> dict[str, float]:
    """The mean loss of train.eval_iters batches of each split, recorded and logged."""
    t, losses = run.cfg.train, {}
    for split in ("train", "val"):
        total = jnp.zeros((), jnp.float32)
        for k in range(t.eval_iters):
            batch = steps.eval_batch(run.data, t, run.lay, split, k)
            total = total + run.programs.eval_step(params, *batch)
        losses[split] = float(total) / t.eval_iters
    run.metrics.add({
        "kind": "eval", "step": step, "tokens": step * run.lay.tokens_per_step,
        "train_loss": losses["train"], "val_loss": losses["val"],
        "wall_s": round(time.perf_counter() - run.started, 3),
    })  # fmt: skip
    log(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    return losses


def save(run: Run, book: logbook.Logbook, state: State, step: int) -> None:
    """Checkpoint the state, which holds `step` steps: not step 0, not the checkpoint this run
    resumed from or the last periodic one again, and nothing after a divergence."""
    if step == book.saved or step == 0 or book.diverged:
        return
    book.saved = step
    host = steps.to_host(state)
    if jax.process_index() == 0:
        meta = resume.checkpoint_meta(run.cfg, run.data, run.lay, run.start, step, book.above_since)
        resume.save(run.ckpt_dir, step, host, meta, run.metrics.dump(), run.cfg.train)


def loop(run: Run, book: logbook.Logbook) -> tuple[State, int]:
    """Train from the start's step to train.max_iters, or to a divergence; returns the state
    and the steps it holds."""
    t, first = run.cfg.train, run.start.step
    state, done = run.start.state, first
    profiler = logbook.Profiler(t.profile_start, t.profile_steps, run.out_dir / "profile")
    for step in range(first, t.max_iters):
        if step % t.eval_interval == 0:
            with book.paused():
                if not book.diverged:
                    evaluate(run, state["params"], step)
        if book.diverged:
            break
        profiler.before(step)
        x, y = steps.train_batch(run.data, t, run.lay, step)
        state, stats = run.programs.run(state, step, x, y, run.start.key_dropout)
        book.add_step(step, stats)
        done = step + 1
        profiler.after(step, state)
        if step > first and book.due(step - 1):
            # The previous step's stats, fetched while this step runs: the host's work between
            # steps (logging, the next batch, the dispatch) overlaps the device's.
            book.fetch(upto=step - 1)
            if book.diverged:
                break
        if t.checkpoint_interval and (step + 1) % t.checkpoint_interval == 0:
            with book.paused():
                save(run, book, state, step + 1)
            if book.diverged:
                break
    book.fetch()
    book.progress.close()
    profiler.close(state)
    return state, done


# ---------------------------------------------------------------- finish


def stop(run: Run, book: logbook.Logbook, state: State, done: int) -> tuple[int, dict]:
    """The last checkpoint, or the divergence recorded; then the final evaluation."""
    t = run.cfg.train
    if not book.diverged:
        with book.paused():
            save(run, book, state, t.max_iters)
        done = t.max_iters
    else:
        book.stopped(done)
    return done, evaluate(run, state["params"], done)


def finish(
    run: Run, book: logbook.Logbook, state: State, done: int, final: dict[str, float]
) -> dict[str, Any]:
    """Write the model directory, its metrics and provenance; returns the run's summary."""
    lay, start = run.lay, run.start
    measured = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state["params"]))
    summary = {
        "step": done, "diverged": book.diverged or None,
        "train_loss": final["train"], "val_loss": final["val"], "n_params": lay.n_params,
        "param_bytes_per_device": lay.param_bytes, "opt_bytes_per_device": lay.opt_bytes,
        "param_bytes_per_device_measured": measured, "devices": jax.device_count(),
        "resumed_from": start.step if start.path is not None else None,
    }  # fmt: skip
    params = steps.to_host(state["params"])
    if jax.process_index() == 0:
        write_model(run, params, done, summary)
    if run.metrics.wandb_run is not None:
        ended = {"final/val_loss": final["val"], "diverged_at": book.diverged.get("step")}
        run.metrics.wandb_run.summary.update(ended)
        run.metrics.wandb_run.finish()
    log(f"model written to {run.out_dir}")
    return summary


def write_model(run: Run, params: Any, done: int, summary: dict[str, Any]) -> None:
    cfg, data, lay, start = run.cfg, run.data, run.lay, run.start
    outputs = checkpoint.save_model(run.out_dir, params, cfg, data.manifest["tokenizer"], done)
    provenance.write_bytes_atomic(run.out_dir / "metrics.jsonl", run.metrics.dump())
    outputs.append(run.out_dir / "metrics.jsonl")
    inputs = [provenance.file_entry(data.dir / "manifest.json", data.manifest_sha256)]
    if start.init_path is not None:
        inputs.append(provenance.file_entry(start.init_path, start.init_sha))
    inputs += [
        provenance.file_entry(data.dir / s["file"], s["sha256"]) for s in data.manifest["shards"]
    ]
    run.record.finish(
        run.out_dir,
        inputs=inputs,
        outputs=[provenance.file_entry(p) for p in outputs],
        extra={
            "manifest_sha256": data.manifest_sha256,
            "batch_schedule": lay.schedule,
            "checkpoints": str(run.ckpt_dir),
            "runtime": lay.rt.describe(),
            "runtime_diagnostics": None if lay.rt_stats is None else lay.rt_stats.describe(),
            "micro_batch": run.micro.describe(),
            "init_from": cfg.model.init_from,
            "wandb_run_id": start.run_id if cfg.logging.wandb_mode != "disabled" else None,
            "summary": summary,
        },
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nanogptx.train", description=__doc__.split("\n\n")[0]
    )
    config.add_arguments(parser, config.STAGE_SECTIONS["train"])
    parser.add_argument("--data", type=Path, required=True, help="prepared data directory")
    parser.add_argument("--out", type=Path, required=True, help="directory of the final model")
    parser.add_argument("--checkpoints", type=Path, required=True, help="resumed from, saved to")
    progress.add_arguments(parser, "train")
    parser.add_argument(
        "--init",
        type=Path,
        help="weights of a pretrained model.init_from (a fresh start fine-tunes them): a "
        "directory with model.safetensors (the download stage's data/raw/hf-<name>) or the file",
    )
    args = parser.parse_intermixed_args(argv)
    cfg = config.from_args(args, parser)
    try:
        train(cfg, args.data, args.out, args.checkpoints, args.init, progress.from_args(args))
    except (UserError, OSError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        steps.leave(1)
    except Exception:  # e.g. a collective whose peer process died
        if not jax.distributed.is_initialized():
            raise
        traceback.print_exc()
        steps.leave(1)


if __name__ == "__main__":
    main()
