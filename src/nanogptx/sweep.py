"""Sweeps: a base run and axes of settings, one ordinary run per point (docs/sweeps.md).
Standard library only (the Snakefile imports it).

    snakemake --cores all sweep --config sweep=lr   # config/sweeps/lr.toml: base = "tiny", [axes]
    python -m nanogptx.sweep lr --cost              # its points, and their device hours
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import math
import re
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanogptx import config, errors

SWEEPS = Path("config/sweeps")


@dataclass(frozen=True)
class Sweep:
    name: str
    base: str  # a run: config/<base>.toml
    axes: tuple[tuple[str, tuple[Any, ...]], ...]  # ("train.learning_rate", (1e-3, ...)), ...


def _value_text(value: Any) -> str:
    """A value as its point's name shows it: a boolean, an integer or a float as TOML writes it
    (a float as short as reads back equal: 0.001, 1e-05, 0.0010000001), a string as itself. A
    text with characters a run name cannot hold has them as '_' and a hash of the value after
    it, so that values differing only there ("a b", "a_b", an emoji) keep distinct names."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:g}" if float(f"{value:g}") == value else repr(value)
        text = text.replace("e+", "e")  # 1e16: a '+' is not a run name's
    elif isinstance(value, (list, tuple)):
        text = ",".join(map(str, value))
    else:
        text = str(value)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", text)
    if text and safe == text:
        return text
    return f"{safe}_{hashlib.sha256(config._toml_value(value).encode()).hexdigest()[:8]}"


# A point's name names its directory (results/NAME/) and files (NAME.log): a file name holds
# 255 bytes, so a longer name is cut and ends in a hash of the whole, as is one that ends in a
# part repeated 20 times (Snakemake takes such a wildcard value for an endless recursion).
NAME_MAX = 200
_PERIODIC = re.compile(r"(.+)\1{19,}$")


def _short(name: str) -> str:
    if len(name) <= NAME_MAX and not _PERIODIC.search(name):
        return name
    return f"{name[: NAME_MAX - 11]}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def load(name: str, directory: Path = SWEEPS) -> Sweep:
    """config/sweeps/<name>.toml, checked: a base run that exists, axes of section.key = [values]
    whose keys the config knows (every point is checked when it is loaded as a run)."""
    path, tree = _read(name, directory)
    base = tree.get("base")
    run = isinstance(base, str) and config.RUN_NAME.fullmatch(base)
    if not run or not (Path("config") / f"{base}.toml").is_file():
        raise config.ConfigError(f"{path}: base = {base!r}: expected a run of config/ (NAME.toml)")
    axes = tree.get("axes")
    if not isinstance(axes, dict) or not axes:
        raise config.ConfigError(f"{path}: [axes] must hold at least one section.key = [values]")
    sweep = Sweep(name, base, tuple(_axis(f"{path}: axes.", k, v) for k, v in axes.items()))
    varied = keys(sweep)
    twice = sorted({k for k in varied if varied.count(k) > 1})
    if twice:
        raise config.ConfigError(
            f"{path}: {', '.join(twice)}: in more than one axis (a point would set it twice)"
        )
    return sweep


def _read(name: str, directory: Path) -> tuple[Path, dict[str, Any]]:
    """The sweep's file and its TOML tree (base and axes only)."""
    if not config.RUN_NAME.fullmatch(name):  # the start of every point's name, and a path
        raise config.ConfigError(
            f"sweep name {name!r}: expected letters, digits, '.', '_' and '-' only, starting with "
            "a letter or digit (it names config/sweeps/NAME.toml and begins its points' names)"
        )
    path = directory / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in directory.glob("*.toml")) if directory.is_dir() else []
        raise config.ConfigError(f"sweep {name!r}: no file {path}; sweeps: {', '.join(known)}")
    try:
        tree = tomllib.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise config.ConfigError(f"{path}: not valid TOML: {e}") from None
    extra = set(tree) - {"base", "axes"}
    if extra:
        raise config.ConfigError(f"{path}: unknown keys {sorted(extra)}; expected base and [axes]")
    return path, tree


def _axis(where: str, key: str, values: Any) -> tuple[str, tuple[Any, ...]]:
    """One axis, checked: config keys, a list of distinct values (of each key, for a group),
    each as the config types it (1 for a float key is 1.0, so two values of one point are seen)."""
    group = key.split(",")
    for k in group:
        section, _, field = k.partition(".")
        cls = config.SECTIONS.get(section)
        if cls is None or field not in cls.__dataclass_fields__:
            what = "" if len(group) == 1 else f" {k!r} is"
            raise config.ConfigError(f"{where}{key!r}:{what} not a config key (section.key)")
    if not isinstance(values, list) or not values:
        raise config.ConfigError(f"{where}{key}: expected a list of distinct values")
    bad = [v for v in values if not isinstance(v, list) or len(v) != len(group)]
    if len(group) > 1 and bad:
        raise config.ConfigError(
            f"{where}{key!r}: {bad[0]!r}: expected a list of {len(group)} values, one per key"
        )
    typed = [_typed(group, v if len(group) > 1 else [v], f"{where}{key}") for v in values]
    for i, v in enumerate(typed):
        if v in typed[:i]:
            first = values[typed.index(v)]
            raise config.ConfigError(
                f"{where}{key!r}: {first!r} and {values[i]!r} are the same value of {key} (one "
                "point): expected a list of distinct values"
            )
    return key, tuple(v if len(group) > 1 else v[0] for v in typed)


def _typed(group: list[str], values: list[Any], where: str) -> tuple[Any, ...]:
    """values of the keys in group as the config types them (a type that is wrong raises)."""
    out = []
    for k, v in zip(group, values, strict=True):
        section, _, field = k.partition(".")
        tp = typing.get_type_hints(config.SECTIONS[section])[field]
        out.append(config._check_type(v, tp, where if len(group) == 1 else f"{where} ({k})"))
    return tuple(out)


def keys(sweep: Sweep) -> list[str]:
    """The config keys the sweep varies (a grouped axis "a.x,a.y" gives a.x and a.y)."""
    return [k for key, _ in sweep.axes for k in key.split(",")]


# A sweep's point that diverges is a result (recorded, its model written), not a failed job
# that stops the sweep; an axis of train.on_divergence overrides this.
POINT_SETTINGS = {"train.on_divergence": "stop"}


def expand(sweep: Sweep) -> dict[str, list[str]]:
    """{run name: its overrides ("section.key=value")}, one run per point of the axes' product,
    each with POINT_SETTINGS."""
    runs = {}
    varied = keys(sweep)
    fixed = [f"{k}={config._toml_value(v)}" for k, v in POINT_SETTINGS.items() if k not in varied]
    named: dict[str, list[tuple[str, Any]]] = {}  # case-folded name: the point's settings
    for point in itertools.product(*(values for _, values in sweep.axes)):
        pairs = []
        for (key, _), value in zip(sweep.axes, point, strict=True):
            group = key.split(",")
            pairs += zip(group, value if len(group) > 1 else [value], strict=True)
        parts = [f"{k.partition('.')[2]}-{_value_text(v)}" for k, v in pairs]
        name = config.check_run_name(_short(".".join([sweep.name, *parts])))
        # Names that differ only in case are one directory on a case-insensitive file system.
        if (other := named.setdefault(name.casefold(), pairs)) is not pairs:
            both = zip(other, pairs, strict=True)
            differ = [f"{k} = {a!r} and {b!r}" for (k, a), (_, b) in both if a != b]
            raise config.ConfigError(
                f"sweep {sweep.name!r}: two points would be one run {name!r} ({', '.join(differ)}"
                "; names that differ only in case are one directory where the file system "
                "ignores case): make these values differ otherwise"
            )
        runs[name] = [f"{k}={config._toml_value(v)}" for k, v in pairs] + fixed
    return runs


def cost(sweep: Sweep, vocab: int | None = None) -> dict[str, dict[str, float]]:
    """{run: {"params", "tokens", "flops"}}: each point's training FLOPs if it runs all its
    steps (a diverged point stops early), nanoGPT's 6 N + attention per token (model's
    flops_per_token), plus its evaluations' forward passes (a third of that per token).
    vocab: the vocabulary size where model.vocab_size leaves it to the tokenizer (None: GPT-2's
    for the gpt2 tokenizer)."""
    import jax

    from nanogptx import model

    out = {}
    for name, overrides in expand(sweep).items():
        cfg = config.load(Path("config") / f"{sweep.base}.toml", overrides)
        gpt2 = config.GPT2_ARCHITECTURE["vocab_size"] if cfg.tokenizer.name == "gpt2" else None
        V = cfg.model.vocab_size or vocab or gpt2
        if V is None:
            raise config.ConfigError(f"{name}: tokenizer {cfg.tokenizer.name!r}: pass --vocab")
        m, t = dataclasses.replace(cfg.model, vocab_size=V), cfg.train
        init = functools.partial(model.init_params, m, model.vocab_rows(m))
        params = jax.eval_shape(init, jax.random.key(0))
        n = model.count_params(params, non_embedding=True)
        per_token = model.flops_per_token(m, n)
        tokens = t.max_iters * config.step_rows(cfg) * m.block_size
        # Evaluations at 0, eval_interval, ... before max_iters, and the last one, of eval_iters
        # micro-batches (train.batch_size = 0: auto's is at most a step's rows, counted as that).
        window = (t.batch_size or config.step_rows(cfg)) * m.block_size
        evals = (-(-t.max_iters // t.eval_interval) + 1) * 2 * t.eval_iters * window
        out[name] = {"params": n, "tokens": tokens, "flops": per_token * (tokens + evals / 3)}
    return out


def _number(tp: type, expected: str, above: float, most: float | None) -> Any:
    """An argparse type: a finite number of type tp, > above and <= most; a bad one names the
    flag (argparse adds it) and what is expected."""
    import argparse

    def parse(text: str) -> Any:
        try:
            value = tp(text)
        except ValueError:
            value = None
        within = value is not None and math.isfinite(value) and value > above
        if not within or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
        return value

    return parse


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m nanogptx.sweep",
        description="A sweep's points, and the device hours it would take.",
    )
    p.add_argument("sweep", metavar="NAME", help="a sweep's name: config/sweeps/NAME.toml")
    p.add_argument("--cost", action="store_true", help="FLOPs and device hours per point")
    peak_help = "the device's peak FLOP/s (default: an H100's bfloat16 dense, logbook.PEAK_FLOPS)"
    p.add_argument(
        "--peak-flops", type=_number(float, "a number of FLOP/s > 0", 0, None), help=peak_help
    )
    mfu = _number(float, "a share of the peak in (0, 1]", 0, 1)
    p.add_argument("--mfu", type=mfu, default=0.3, help="the share of the peak assumed (0.3: 30%%)")
    vocab_help = "vocabulary size (default: GPT-2's with gpt2)"
    p.add_argument("--vocab", type=_number(int, "an integer > 0", 0, None), help=vocab_help)
    args = p.parse_args(argv)
    try:
        s = load(args.sweep)
        if not args.cost:
            with errors.reader_may_stop():
                for name, overrides in expand(s).items():
                    print(name, *overrides)
            return
        points = cost(s, args.vocab)
    except config.ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    from nanogptx.logbook import PEAK_FLOPS

    peak = args.peak_flops or PEAK_FLOPS["H100"]
    rate = peak * args.mfu
    if not 0 < rate < math.inf:  # each in range, their product not (1e-320 x 0.1 is 0.0)
        p.error(
            f"--peak-flops {peak:g} x --mfu {args.mfu:g} = {rate:g} FLOP/s: expected a rate "
            "above 0 that a float holds"
        )
    total = sum(p["flops"] for p in points.values())
    with errors.reader_may_stop():
        for name, p in points.items():
            print(
                f"{name}: {p['params'] / 1e6:.2f}M parameters, {p['tokens'] / 1e9:.3g}B tokens, "
                f"{p['flops']:.3g} FLOPs, {p['flops'] / rate / 3600:.2f} device hours"
            )
        print(
            f"{len(points)} points, {total:.3g} FLOPs: {total / rate / 3600:.1f} device hours "
            f"at {args.mfu:.0%} of {peak / 1e12:g} TFLOP/s (a point that diverges stops early "
            "and costs less)"
        )


if __name__ == "__main__":
    main()
