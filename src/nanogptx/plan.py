"""The memory plan of a run (nothing runs): each program compiled for a GPU target (no GPU
needed) or this machine's devices, its memory against the budget; exits 1 naming a misfit.

    python -m nanogptx.plan --config config/gpt2-124m-fineweb.toml --target h100 --devices 8
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import importlib.util
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanogptx import config, errors, memory
from nanogptx.config import Config
from nanogptx.errors import UserError

# --target names: XLA's descriptions shipped in nanogptx/gpu_targets (Apache-2.0, The OpenXLA
# Authors; see its README.md).
TARGETS = {
    "h100": "h100_sxm.txtpb",
    "h200": "h200.txtpb",
    "a100-80g": "a100_sxm_80.txtpb",
    "a6000": "a6000.txtpb",
}
# Fields newer than this jaxlib's parser of the description (it refuses the whole text).
UNKNOWN_FIELDS = ("collective_memory_granularity",)
# The stages whose programs a plan compiles.
STAGES = ("train", "sample", "eval")
# A char vocabulary is known once prepare has read the text: its size where none is given.
CHAR_VOCAB = 256


class PlanError(UserError, RuntimeError):
    """A target or setting the plan cannot compile for."""


# ---------------------------------------------------------------- targets


def cuda_available() -> bool:
    """Whether JAX's CUDA plugin (the cuda or cuda12 extra) is installed."""
    for name in ("jax_plugins.xla_cuda13", "jax_plugins.xla_cuda12"):
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except ModuleNotFoundError:
            continue
    return False


def target_text(target: str) -> str:
    """The GPU description of a --target: a shipped one by name, or a file."""
    if target in TARGETS:
        files = importlib.resources.files("nanogptx") / "gpu_targets"
        text = (files / TARGETS[target]).read_text()
    else:
        path = Path(target)
        expected = (f"expected one of {', '.join(TARGETS)} or a file of XLA's GPU description "
                    "(GpuTargetConfigProto text)")  # fmt: skip
        if not path.is_file():
            what = "a directory" if path.is_dir() else "no such file"
            raise PlanError(f"--target {target!r}: {expected} ({what})")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeError) as e:  # unreadable, or not text (a binary file)
            raise PlanError(
                f"--target {target!r}: cannot read it as text ({e}): {expected}"
            ) from None
    return "\n".join(
        line for line in text.splitlines() if line.split(":")[0].strip() not in UNKNOWN_FIELDS
    )


def target_memory(text: str, target: str) -> int:
    """Bytes of one GPU's memory, from its description."""
    found = re.search(r"device_memory_size:\s*(\d+)", text)
    if not found:
        raise PlanError(f"--target {target}: the description has no device_memory_size")
    return int(found.group(1))


def gpu_devices(text: str, n: int, target: str) -> list[Any]:
    """n compile-only devices of the described GPU, as on one host (topology 1x1xN)."""
    from jax.experimental import topologies

    if not cuda_available():
        raise PlanError(
            f"--target {target}: compiling for a GPU needs JAX's CUDA build, "
            "the cuda extra: pip install -e '.[cuda]' (no GPU needed; about 4.8 GB "
            "of wheels)"
        )
    try:
        topo = topologies.get_topology_desc(
            platform="cuda", topology=f"1x1x{n}", target_config=text
        )
    except Exception as e:  # a description this XLA cannot read
        raise PlanError(f"--target {target}: XLA refused the GPU description: {e}") from None
    return list(topo.devices)


# ---------------------------------------------------------------- FLOPs of a traced program


def count_flops(jaxpr: Any) -> float:
    """Matrix-multiply FLOPs of a traced program (2 per multiply-add of every dot_general,
    loops multiplied out, recomputation (remat) included; cuDNN's attention counted as the
    dense dots it replaces: 4 B H L M K forward, twice that backward). Elementwise work is not
    counted, as in nanoGPT's estimate (model.flops_per_token)."""
    from jax._src import core

    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2.0 * math.prod(out) * math.prod(lhs[i] for i in contract)
        elif name.startswith(("dot_product_attention_fwd", "dot_product_attention_bwd")):
            q, k = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape  # B L H K, B M J K
            dense = 4.0 * q[0] * q[1] * q[2] * q[3] * k[1]
            total += dense if "fwd" in name else 2 * dense
        elif name == "scan":
            total += eqn.params["length"] * count_flops(eqn.params["jaxpr"].jaxpr)
        elif name == "cond":
            total += max(count_flops(b.jaxpr) for b in eqn.params["branches"])
        else:
            total += sum(count_flops(sub) for sub in core.jaxprs_in_params(eqn.params))
    return total


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Program:
    """One compiled program of a run: its memory per device (None: it could not be built, see
    error), the budget, its FLOPs (traced: count_flops; estimate: forward FLOPs per token times
    tokens, for the sampling loop whose inner loops have traced bounds) and tokens per call."""

    name: str
    stage: str
    devices: int
    usage: Any
    budget: Any
    flops: float | None
    flops_source: str
    tokens: int
    error: str | None = None
    note: str = ""  # how the program measured differs from the one the stage runs

    @property
    def fits(self) -> bool:
        return self.error is None and self.budget.fits(self.usage)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "stage": self.stage, "devices": self.devices,
            "memory_bytes": None if self.usage is None else self.usage.as_dict(),
            "budget_bytes": self.budget.bytes, "fits": self.fits, "flops": self.flops,
            "flops_source": self.flops_source, "tokens": self.tokens, "error": self.error,
            "note": self.note,
        }  # fmt: skip


@dataclass
class Plan:
    config: str
    target: str
    device_kind: str
    devices: int
    vocab: int
    vocab_source: str
    budget: Any
    micro: Any  # microbatch.MicroBatch, None where the training cannot be planned
    programs: list[Program] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)

    @property
    def misfits(self) -> list[Program]:
        return [p for p in self.programs if not p.fits]

    def as_dict(self) -> dict[str, Any]:
        return {
            "config": self.config, "target": self.target, "device_kind": self.device_kind,
            "devices": self.devices, "vocab": self.vocab, "vocab_source": self.vocab_source,
            "budget_bytes": self.budget.bytes, "budget_rule": self.budget.rule,
            "micro_batch": None if self.micro is None else self.micro.describe(),
            "programs": [p.as_dict() for p in self.programs],
            "fits": not self.misfits, "advice": self.advice,
        }  # fmt: skip


def shaped(tree: Any, sharding: Any) -> Any:
    """Abstract values (shape, dtype) of a tree of arrays or shapes, placed by sharding."""
    import jax

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def make_plan(
    cfg: Config,
    devices: list[Any],
    memory_size: int | None,
    vocab: int,
    vocab_source: str,
    config_name: str = "",
    target: str = "local",
    stages: tuple[str, ...] = STAGES,
) -> Plan:
    """Compile every program of a run's stages for `devices` (the training's mesh and the eval
    stage's, which splits its rows over them; sampling runs on the first, as its stage does) and
    measure each against the budget (a target's memory_size, else the device's own limit)."""
    import numpy as np
    from jax.sharding import AxisType, Mesh

    from nanogptx import model, resume

    cfg = resume.resolve_vocab(cfg, vocab)
    V, n = model.vocab_rows(cfg.model), len(devices)
    budget = memory.budget_of(devices[0], memory_size)
    plan = Plan(config_name, target, devices[0].device_kind, n, vocab, vocab_source, budget, None)
    if "train" in stages:
        mesh = Mesh(np.array(devices), ("data",), axis_types=(AxisType.Auto,))
        plan_training(plan, cfg, V, mesh)
    # Sampling and the eval stage: float32 parameters (the model file's), their own processes.
    if "sample" in stages:
        plan_sampling(plan, cfg, V, devices[0])
    if "eval" in stages:
        plan_eval(plan, cfg, V, devices)
    return plan


def plan_training(plan: Plan, cfg: Config, V: int, mesh: Any) -> None:
    """The training stage's programs at the micro-batch it would run with."""
    from nanogptx import microbatch, steps

    budget, n = plan.budget, plan.devices
    try:
        micro = microbatch.fit_micro_batch(cfg, V, mesh, budget)
    except steps.TrainError as e:
        plan.programs += [
            Program(name, "train", n, None, budget, None, "", 0, str(e))
            for name in steps.programs_of(cfg)
        ]
        plan.advice.append(str(e))
        return
    plan.micro = micro
    B, A, L = micro.batch_size, micro.micro_batches, cfg.model.block_size
    usage = micro.memory or microbatch.measure_programs(cfg, V, mesh, B, budget)
    program = steps.with_batch(cfg, B)
    for name in steps.programs_of(cfg):
        traced = steps.trace_program(program, V, A, mesh, name)
        tokens = B * L if name == "eval_step" else A * B * L
        flops = count_flops(traced.jaxpr.jaxpr)
        plan.programs.append(
            Program(name, "train", n, usage[name], budget, flops, "traced", tokens)
        )
    if micro.misfit:
        plan.advice += microbatch.advice(cfg, micro, n)


def params_shape(cfg: Config, V: int) -> Any:
    """The model's parameters as abstract values: float32, as the model file holds them."""
    import jax

    from nanogptx import model

    return jax.eval_shape(lambda: model.init_params(cfg.model, V, jax.random.key(0)))


def plan_sampling(plan: Plan, cfg: Config, V: int, device: Any) -> None:
    """The sampling loop, on one device (the sample stage's)."""
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    one = NamedSharding(Mesh(np.array([device]), ("data",)), P())
    program = sample_program(cfg, V, device, one, params_shape(cfg, V), plan.budget)
    plan.programs.append(program)
    if not program.fits:
        plan.advice.append("fewer sample.num_samples (generated together as one batch)")


def plan_eval(plan: Plan, cfg: Config, V: int, devices: list[Any]) -> None:
    """The eval stage's scorers, on the devices it splits its rows over."""
    programs = eval_programs(cfg, devices, params_shape(cfg, V), plan.budget)
    plan.programs += programs
    if any(not p.fits for p in programs):
        plan.advice.append("a smaller eval.batch_size")


def sample_program(
    cfg: Config, V: int, device: Any, one: Any, params_abs: Any, budget: Any
) -> Program:
    """The sampling loop, measured (its FLOPs estimated: its inner loops have traced bounds)."""
    import jax
    import numpy as np

    from nanogptx import model, runtime, sample

    m, rt = cfg.model, runtime.choose_for(cfg.model, device)
    per_token = model.flops_per_token(m, model.count_params(params_abs, non_embedding=True))
    s, note = cfg.sample, ""
    if runtime.compile_only(device) and s.num_samples == 1 and 0 < s.top_k < V:
        # XLA's GPU top-k of a single row asks the GPU for its properties while compiling,
        # which a compile-only target cannot answer: two rows, an upper bound, are measured.
        s = dataclasses.replace(s, num_samples=2)
        note = (
            "measured with 2 samples, not 1: XLA's top-k of one row needs the GPU itself to "
            "compile (an upper bound)"
        )
    prompt = jax.ShapeDtypeStruct((m.block_size,), np.int32)  # the longest the stage keeps
    args, static = sample.generate_args(params_abs, prompt, m, s, rt)
    with runtime.cudnn_capability(runtime.capability_of(device)):
        traced = sample._generate.trace(*shaped(args, one), **static)
    B = cfg.sample.num_samples  # the stage's, whatever was measured
    usage = memory.usage(traced.lower().compile(runtime.compiler_options(device)))
    flops = per_token / 3 * B * (m.block_size + s.max_new_tokens)
    tokens = B * s.max_new_tokens
    return Program("sample_loop", "sample", 1, usage, budget, flops, "estimate", tokens, note=note)


def eval_programs(cfg: Config, devices: list[Any], params_abs: Any, budget: Any) -> list[Program]:
    """The eval stage's scorers as it runs them (nanogptx.eval.on_devices): the float32
    parameters replicated, the rows padded to a multiple of the devices and split over them (so
    the memory is per device). Per eval.tasks entry (a group: all its members) the loss scorer
    and, for language_modeling tasks, the greedy one (named ..._greedy), each at the largest
    bucket the entry's tasks can meet (nanogptx.eval.scorer_shapes)."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from nanogptx import eval as eval_stage
    from nanogptx import runtime

    m, n, out = cfg.model, len(devices), []
    mesh = Mesh(np.array(devices), ("data",))
    split, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    params = shaped(params_abs, replicated)
    rt = runtime.choose_for(m, devices[0])
    scorers = {name: eval_stage.make_scorer(m, rt, greedy=name == "greedy")
               for name in ("loss", "greedy")}  # fmt: skip
    for task in cfg.eval.tasks:
        for name, (rows, width, E) in eval_stage.scorer_shapes(task, m, cfg.eval).items():
            padded = -(-rows // n) * n  # as on_devices pads them
            ids = jax.ShapeDtypeStruct((padded, width), np.int32, sharding=split)
            at = jax.ShapeDtypeStruct((padded, E), np.int32, sharding=split)
            w = jax.ShapeDtypeStruct((padded, E), np.float32, sharding=split)
            with runtime.cudnn_capability(runtime.capability_of(devices[0])):
                traced = scorers[name].trace(params, ids, at, w)
            compiled = traced.lower().compile(runtime.compiler_options(devices[0]))
            note = (
                f"{rows} rows padded to {padded}, a multiple of the {n} devices"
                if padded != rows
                else ""
            )
            out.append(
                Program(
                    f"eval_{task}" + ("_greedy" if name == "greedy" else ""), "eval", n,
                    memory.usage(compiled), budget, count_flops(traced.jaxpr.jaxpr), "traced",
                    rows * E, note=note,
                )
            )  # fmt: skip
    return out


# ---------------------------------------------------------------- the command


def report(plan: Plan) -> str:
    """The plan as text: a header, then one line per program, its name and total GiB first."""
    lines = [
        f"plan of {plan.config or 'the run'} on {plan.devices} x {plan.device_kind} "
        f"({'compile-only target ' + plan.target if plan.target != 'local' else 'this machine'})",
        f"vocabulary {plan.vocab} ({plan.vocab_source})",
    ]
    if plan.micro is not None:
        mb = plan.micro
        lines.append(f"micro-batch {mb.batch_size} rows, {mb.micro_batches} per step ({mb.how})")
    lines.append(
        f"budget per device: {memory.gib(plan.budget.bytes)} GiB, what JAX hands out: "
        f"{plan.budget.rule}"
    )
    head = ("program", "GiB/device", "arguments", "temporaries", "budget", "FLOPs",
            "tokens/step", "outputs", "resident", "devices")  # fmt: skip
    rows = [head]
    for p in plan.programs:
        if p.usage is None:
            rows.append((p.name, "-", "-", "-", memory.gib(p.budget.bytes), "-", "-", "-", "-",
                         str(p.devices)))  # fmt: skip
            continue
        u = p.usage
        flops = (
            "-"
            if p.flops is None
            else ("~" if p.flops_source == "estimate" else "") + (f"{p.flops:.3g}")
        )
        rows.append((p.name, memory.gib(u.total), memory.gib(u.arguments),
                     memory.gib(u.temporaries), memory.gib(p.budget.bytes), flops, str(p.tokens),
                     memory.gib(u.outputs - u.aliased), memory.gib(u.resident),
                     str(p.devices)))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        cells = [c.rjust(w) for c, w in zip(r, widths, strict=True)]
        cells[0] = r[0].ljust(widths[0])
        lines.append("  ".join(cells).rstrip())
    lines.append(
        "(GiB per device; resident: the optimizer state that stays allocated while "
        "training evaluates; ~: estimated FLOPs. Memory from XLA's compiled programs; "
        "nothing ran, so nothing here says how fast.)"
    )
    for p in plan.programs:
        if p.error:
            lines.append(f"{p.name}: cannot be built: {p.error}")
        if p.note:
            lines.append(f"{p.name}: {p.note}")
    return "\n".join(lines)


def plan_run(
    cfg: Config,
    target: str | None,
    n_devices: int | None,
    vocab: int | None = None,
    data: Path | None = None,
    config_name: str = "",
    stages: tuple[str, ...] = STAGES,
) -> Plan:
    """The plan of a run for a --target (None: this machine's devices)."""
    import jax

    from nanogptx import loader

    if data is not None:
        try:
            vocab = int(loader.read_manifest(data)["tokenizer"]["vocab_size"])
        except loader.DataError as e:
            raise PlanError(f"--data: {e}") from None
        source = f"the tokenizer's, {data}"
    elif vocab is not None:
        source = "--vocab"
    elif cfg.model.vocab_size:
        vocab, source = cfg.model.vocab_size, "model.vocab_size"
    elif cfg.tokenizer.name == "gpt2":
        vocab, source = config.GPT2_ARCHITECTURE["vocab_size"], "GPT-2's tokenizer"
    else:
        vocab = CHAR_VOCAB
        source = (
            "assumed: a char vocabulary is known after prepare; --data "
            "data/prepared/ID or --vocab N gives it"
        )
    if target is None:
        local = jax.devices()
        n = n_devices or len(local)
        if n > len(local):
            raise PlanError(
                f"--devices {n}: this machine has {len(local)} "
                f"{local[0].platform} devices; name a --target for others"
            )
        return make_plan(cfg, local[:n], None, vocab, source, config_name, "local", stages)
    text = target_text(target)
    # JAX's CUDA plugin reads the allocator's settings as it starts: one it refuses leaves no
    # GPU target at all ("topology not implemented"), so they are checked first.
    memory.allocator_share()
    devices = gpu_devices(text, n_devices or 1, target)
    memory_size = target_memory(text, target)
    return make_plan(cfg, devices, memory_size, vocab, source, config_name, target, stages)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nanogptx.plan", description=__doc__.split("\n\n")[0]
    )
    config.add_arguments(parser, list(config.SECTIONS))
    parser.add_argument(
        "--target",
        help=f"a GPU: {', '.join(TARGETS)}, or a file of XLA's GPU "
        "description; default: this machine's devices",
    )
    parser.add_argument(
        "--devices",
        type=int,
        help="devices of the training (default: 1 for a --target, else this machine's)",
    )
    parser.add_argument(
        "--vocab", type=int, help="vocabulary size where the config leaves it to a char tokenizer"
    )
    parser.add_argument("--data", type=Path, help="prepared data directory (its vocabulary)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = parser.parse_intermixed_args(argv)
    cfg = config.from_args(args, parser)
    for flag, value in (("--devices", args.devices), ("--vocab", args.vocab)):
        if value is not None and value < 1:
            parser.exit(2, f"{parser.prog}: error: {flag} {value}: expected >= 1\n")
    if args.target is not None and "JAX_PLATFORMS" not in os.environ:
        import jax

        # Compile-only GPU devices need no GPU backend: on CPU, JAX's CUDA plugin stays quiet
        # (it would print a traceback looking for a GPU) and still compiles for the target.
        jax.config.update("jax_platforms", "cpu")
    try:
        plan = plan_run(
            cfg, args.target, args.devices, args.vocab, args.data, str(args.config or "defaults")
        )
    except UserError as e:  # PlanError, memory.EnvError, a runtime the devices cannot run
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    with errors.reader_may_stop():
        print(json.dumps(plan.as_dict(), indent=1) if args.json else report(plan))
    if plan.misfits:
        for p in plan.misfits:
            why = p.error or memory.shortfall(p.usage, p.budget)
            print(f"{parser.prog}: {p.name} does not fit: {why}", file=sys.stderr)
        if plan.advice:
            print(
                f"{parser.prog}: change: " + "; ".join(dict.fromkeys(plan.advice)), file=sys.stderr
            )
        sys.exit(1)


if __name__ == "__main__":
    main()
