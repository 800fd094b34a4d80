"""What a training reports: log lines, metrics.jsonl and wandb, the progress meter's steps, MFU
against the devices' peak, the loop's logbook (the steps whose stats are not fetched yet,
the clock since the last report, the divergence watch) and a profiler trace."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nanogptx import checkpoint, config, optim, progress, provenance
from nanogptx.config import Config, TrainConfig
from nanogptx.steps import Layout, TrainError

# Peak dense bfloat16 FLOP/s of one device, by device kind, for MFU when train.peak_flops = 0.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "V100": 125e12}
# A plan longer than this at the devices' peak gets a warning before anything compiles; a plan
# that is shorter even at SLOWEST_FLOPS per device needs no peak measured to say so.
LONG_PLAN_S, SLOWEST_FLOPS = 3600.0, 1e9


def log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


# ---------------------------------------------------------------- MFU


def measure_flops(dtype: Any = jnp.float32, n: int = 2048, seconds: float = 1.0) -> float:
    """FLOP/s of an n x n matmul on the default device: the best of as many runs as fit in
    `seconds` (at least 5), so that a moment of load on a shared machine does not set it."""
    a_NxN = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a_NxN).block_until_ready()
    best, start, runs = math.inf, time.perf_counter(), 0
    while runs < 5 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        f(a_NxN).block_until_ready()
        best, runs = min(best, time.perf_counter() - t0), runs + 1
    return 2 * n**3 / best


def peak_flops(t: TrainConfig) -> tuple[float | None, str]:
    """Peak FLOP/s of one device, and where it came from: train.peak_flops, else the table by
    device kind, else measured (train.measure_peak) in the compute dtype, else none."""
    if t.peak_flops > 0:
        return t.peak_flops, "train.peak_flops"
    kind = jax.devices()[0].device_kind
    known = next((v for k, v in PEAK_FLOPS.items() if k in kind), None)
    if known is not None:
        return known, f"the table's {kind}"
    if t.measure_peak:
        return measure_flops(jnp.dtype(t.compute_dtype)), f"measured, {t.compute_dtype} matmul"
    return None, f"unknown for {kind}: set train.peak_flops or train.measure_peak"


def plan_peak(t: TrainConfig, flops: float, n_dev: int) -> tuple[float | None, str]:
    """peak_flops, measured where no setting or table gives it but the plan of `flops` could
    take longer than LONG_PLAN_S (a second spent to tell the user, and then MFU)."""
    peak, source = peak_flops(t)
    if peak is None and flops / (SLOWEST_FLOPS * n_dev) > LONG_PLAN_S:
        dtype = jnp.dtype(t.compute_dtype)
        peak, source = measure_flops(dtype), f"measured, {dtype} matmul, for the plan's estimate"
    return peak, source


def long_plan(cfg: Config, steps: int, flops: float, peak: float, n_dev: int, source: str) -> str:
    """A warning for a training of `flops` that would take more than LONG_PLAN_S on these
    devices even at their peak (empty: it would not), with the estimate."""
    at_peak = flops / (peak * n_dev)
    if at_peak <= LONG_PLAN_S:
        return ""
    m = cfg.model
    return (
        f"warning: the {steps:,} steps planned (train.max_iters = {cfg.train.max_iters:,}) are "
        f"{flops:.3g} FLOPs: at least {progress.duration(at_peak)} on "
        f"{progress.plural(n_dev, 'device')} at their peak ({peak / 1e12:.3g} TFLOP/s, {source}), "
        f"about {progress.duration(at_peak / 0.4)} at a typical 40% MFU, for a model of "
        f"{progress.plural(m.n_layer, 'layer')} {m.n_embd} wide. Is this the run you meant? A "
        "run's file holds only what differs from the defaults (GPT-2 124M, 600,000 steps): "
        "start it from a recipe in config/ (README: Adding a dataset)"
    )


def mfu_peak(
    cfg: Config, flops_per_step: float, start: int, channel: progress.Channel | None
) -> tuple[float | None, str]:
    """The peak FLOP/s that MFU is against (plan_peak), logged, and a warning before any compile
    where the steps from `start` on would take long even at that peak (long_plan)."""
    t, n_dev = cfg.train, jax.device_count()
    planned = flops_per_step * max(0, t.max_iters - start)
    peak, source = plan_peak(t, planned, n_dev)
    log(
        f"MFU against a peak of {peak / 1e12:.3g} TFLOP/s per device ({source})"
        if peak
        else f"no MFU: peak FLOP/s {source}"
    )
    if peak and (warning := long_plan(cfg, t.max_iters - start, planned, peak, n_dev, source)):
        log(warning)
        if channel is not None and jax.process_index() == 0:  # snakemake's terminal too
            channel.say(warning)
    return peak, source


# ---------------------------------------------------------------- metrics and wandb


def initial_loss(records: list[dict[str, Any]]) -> float | None:
    """The step-0 evaluation's train loss, L0 (None when the records lack it)."""
    first = (r for r in records if r.get("kind") == "eval" and r["step"] == 0)
    return next((r["train_loss"] for r in first if r["train_loss"] is not None), None)


class Metrics:
    """Records in memory, appended to <out>/metrics.jsonl as they come, and sent to wandb."""

    def __init__(self, path: Path, records: list[dict[str, Any]], wandb_run: Any) -> None:
        self.path, self.records, self.wandb_run = path, records, wandb_run
        if jax.process_index() == 0:
            provenance.write_bytes_atomic(path, self.dump())

    def dump(self) -> bytes:
        return "".join(json.dumps(r) + "\n" for r in self.records).encode()

    def add(self, record: dict[str, Any]) -> None:
        record = provenance.finite(record)  # a NaN or inf as null: the file stays JSON
        self.records.append(record)
        if jax.process_index() != 0:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            values = {k: v for k, v in record.items() if k not in ("kind", "step")}
            self.wandb_run.log(flat(values, record["kind"]), step=record["step"])


def flat(tree: Any, prefix: str) -> dict[str, Any]:
    """{"a": {"b": [x, y]}} as {"prefix/a/b/0": x, "prefix/a/b/1": y}: scalars for wandb."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in flat(sub, f"{prefix}/{i}").items()}
    return {prefix: tree}


def start_wandb(cfg: Config, run_id: str, ckpt_dir: Path, out_dir: Path) -> Any:
    """A wandb run (None when disabled) that a resumed run continues, by its kept id."""
    lc = cfg.logging
    if lc.wandb_mode == "disabled" or jax.process_index() != 0:
        return None
    import wandb

    try:
        return wandb.init(
            project=lc.wandb_project, name=lc.wandb_run_name or out_dir.resolve().parent.name,
            id=run_id, resume="allow", mode=lc.wandb_mode, config=config.to_dict(cfg),
            dir=str(ckpt_dir),
        )  # fmt: skip
    except wandb.errors.Error as e:
        raise TrainError(
            f"logging.wandb_mode = {lc.wandb_mode!r}: wandb refused to start ({e}); run `wandb "
            'login` or set WANDB_API_KEY, or set logging.wandb_mode = "offline" (sync later '
            "with `wandb sync`)"
        ) from None


# ---------------------------------------------------------------- the loop's logbook


@dataclass
class Logbook:
    """The training loop's state besides the train state, declared in one place: each step's
    stats are handed in as dispatched and fetched a step later (the host's work overlaps the
    device's), logged every logging.log_interval steps with the speed since the last report,
    and watched for a divergence (train.on_divergence)."""

    cfg: Config
    metrics: Metrics
    progress: progress.Meter  # progress.steps: the bar, or the lines to the channel
    ckpt_dir: Path
    lay: Layout
    peak: float | None  # FLOP/s per device that MFU is against (raised by a faster step)
    peak_source: str
    saved: int | None  # the newest step checkpointed (the one resumed from): not saved again
    # The first of the latest steps whose training loss is above L0 (None: the last step's is
    # not); checkpoints keep it, so a resumed run stops where an uninterrupted one would.
    above_since: int | None
    pending: list[tuple[int, dict[str, jax.Array]]] = field(default_factory=list)
    diagnosed: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    seconds: float = 0.0  # timed training since the last report, over `steps` steps
    steps: int = 0
    since: float = field(default_factory=time.perf_counter)  # the clock's last reading
    diverged: dict[str, Any] = field(default_factory=dict)  # on_divergence = "stop": where, why

    def add_step(self, step: int, stats: dict[str, Any]) -> None:
        """A dispatched step's stats (device arrays; "diag" from a diagnostics step)."""
        if "diag" in stats:
            self.diagnosed.append((step, stats.pop("diag")))
        self.pending.append((step, stats))

    def due(self, step: int) -> bool:
        return step % self.cfg.logging.log_interval == 0 or step == self.cfg.train.max_iters - 1

    def fetch(self, upto: int | None = None) -> None:
        """Fetch the stats of the steps run since the last fetch (up to step `upto`, else all of
        them, waiting for the device), stop at a divergence, and report the steps before it
        that logging.log_interval asks for."""
        ready = [(s, stats) for s, stats in self.pending if upto is None or s <= upto]
        del self.pending[: len(ready)]
        fetched = [(s, diag) for s, diag in self.diagnosed if upto is None or s <= upto]
        del self.diagnosed[: len(fetched)]
        host, diags = jax.device_get(([stats for _, stats in ready], fetched))
        now = time.perf_counter()
        self.seconds += now - self.since
        self.since = now
        self.steps += len(ready)
        for (step, _), stats in zip(ready, host, strict=True):
            loss, grad_norm = stats["loss"], stats["grad_norm"]
            if self.diverged or not (why := self.divergence(step, loss, grad_norm)):
                if not self.diverged and self.due(step):
                    self.record_stats(diags, step)
                    self.report(step, stats)
                continue
            self.diverge(step, stats, why)
        self.record_stats(diags, math.inf)

    def record_stats(self, diags: list[tuple[int, dict[str, Any]]], last: float) -> None:
        """Record the diagnostics of the steps up to `last`: records go in step order, as wandb
        keeps only steps at or above the last it logged."""
        while diags and diags[0][0] <= last:
            step, diag = diags.pop(0)
            self.metrics.add(
                {"kind": "stats", "step": step, **jax.tree.map(lambda a: a.tolist(), diag)}
            )

    def divergence(self, step: int, loss: float, grad_norm: float) -> str | None:
        """Why the run has diverged at step, or None: a loss or gradient norm that is not
        finite; with on_divergence = stop, also a training loss above L0 at each of the last
        divergence_steps steps after the warmup (a spike it recovers from is not one)."""
        t = self.cfg.train
        if not (np.isfinite(loss) and np.isfinite(grad_norm)):
            return f"loss is {loss} (grad norm {grad_norm})"
        L0 = initial_loss(self.metrics.records)
        warmed = max(1, t.warmup_iters if t.decay_lr else 0)  # the first step after the warmup
        if t.on_divergence != "stop" or step < warmed or L0 is None:
            return None
        if loss <= L0:
            self.above_since = None
            return None
        since = self.above_since = step if self.above_since is None else self.above_since
        if step - since + 1 < t.divergence_steps:
            return None
        return (
            f"the training loss stayed above the step-0 loss {L0:.4f} for the "
            f"{step - since + 1} steps {since} to {step} after the warmup (train."
            f"divergence_steps = {t.divergence_steps}; now {loss:.4f})"
        )

    def diverge(self, step: int, stats: dict[str, Any], why: str) -> None:
        """Stop at a divergence: a TrainError (on_divergence = fail), else recorded as where the
        run stopped. The last good checkpoint is the newest before `step`: step's loss is that
        of the state checkpoint `step` holds, so the one at `step` (if saved) has diverged."""
        found = [p for s, p in checkpoint.list_checkpoints(self.ckpt_dir) if s < step]
        good = found[-1] if found else None
        if self.cfg.train.on_divergence == "fail":
            raise TrainError(
                f"{why} at step {step}: training stopped; the last good checkpoint is "
                f"{good or 'none (none saved)'} (train.on_divergence = 'stop' would record "
                "the divergence as the run's result)"
            )
        self.diverged.update(
            step=step,
            reason=why,
            loss=float(stats["loss"]),
            grad_norm=float(stats["grad_norm"]),
            last_good_checkpoint=None if good is None else good.name,
        )

    def stopped(self, done: int) -> None:
        """Record the divergence, and that training stopped with `done` steps."""
        self.fetch()
        self.diverged["stopped_at"] = done
        self.metrics.add({"kind": "diverged", **self.diverged})
        log(
            f"diverged at step {self.diverged['step']}: {self.diverged['reason']}; training "
            f"stopped at step {done} of {self.cfg.train.max_iters} and its model is written as "
            "the run's result (train.on_divergence = 'stop')"
        )

    def report(self, step: int, stats: dict[str, Any]) -> None:
        """Log and record step's training stats, with the speed of the steps since the last
        report."""
        t, n_dev, per_token = self.cfg.train, jax.device_count(), self.lay.flops_per_token
        dt = self.seconds / max(self.steps, 1)
        tok_s = self.lay.tokens_per_step / dt
        mfu = None if self.peak is None else per_token * tok_s / (self.peak * n_dev)
        if mfu is not None and mfu > 1.0:  # a step cannot beat the peak: it was too low
            log(
                f"step {step} ran at {per_token * tok_s / n_dev / 1e12:.3g} TFLOP/s per device, "
                f"above the peak of {self.peak / 1e12:.3g} ({self.peak_source}): the peak was "
                "underestimated; MFU is against this step's rate from here on"
            )
            self.peak, self.peak_source = per_token * tok_s / n_dev, f"step {step}'s rate"
            mfu = 1.0
        loss, grad_norm = float(stats["loss"]), float(stats["grad_norm"])
        self.metrics.add({
            "kind": "train", "step": step, "tokens": (step + 1) * self.lay.tokens_per_step,
            "loss": loss, "lr": optim.get_lr(step, t), "grad_norm": grad_norm,
            "ms_per_iter": 1e3 * dt, "tokens_per_s": tok_s, "mfu": mfu,
            **({"z_loss": float(stats["z_loss"])} if "z_loss" in stats else {}),
        })  # fmt: skip
        mfu_text = "" if mfu is None else f", MFU {100 * mfu:.1f}%"
        log(
            f"step {step}: loss {loss:.4f}, lr {optim.get_lr(step, t):.3e}, grad norm "
            f"{grad_norm:.3f}, {1e3 * dt:.1f} ms/iter, {tok_s:,.0f} tok/s{mfu_text}"
        )
        eta_s = (t.max_iters - step - 1) * dt  # from the step time: compiles are not steps
        self.progress.update(step + 1, f"loss {loss:.4f}, {tok_s:,.0f} tok/s", eta_s=eta_s)
        self.seconds, self.steps = 0.0, 0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Work outside the timed training (after fetching the pending steps)."""
        self.fetch()
        yield
        self.since = time.perf_counter()


@dataclass
class Profiler:
    """A jax.profiler trace of train.profile_steps steps from train.profile_start (0: none)."""

    first: int
    count: int
    path: Path
    tracing: bool = False

    def before(self, step: int) -> None:
        if self.first and step == self.first:
            jax.profiler.start_trace(str(self.path), create_perfetto_trace=True)
            self.tracing = True

    def after(self, step: int, state: Any) -> None:
        if self.tracing and step == self.first + self.count - 1:
            self.close(state)
            log(f"profile of steps {self.first}-{step} written to {self.path}")

    def close(self, state: Any) -> None:
        if self.tracing:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.tracing = False
