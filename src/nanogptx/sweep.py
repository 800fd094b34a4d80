"""Sweeps: a base run and axes of settings, expanded into one ordinary run per point.

    # config/sweeps/lr.toml
    base = "tiny"                                  # config/tiny.toml
    [axes]
    "train.learning_rate" = [1e-3, 3e-3, 1e-2]
    "model.qk_norm" = [false, true]
    "model.n_embd,model.n_layer" = [[64, 2], [128, 4]]  # keys varied together

    snakemake --cores all sweep --config sweep=lr

Each point is a run named <sweep>.<key>-<value>... (for example
lr.learning_rate-0.003.qk_norm-true.n_embd-64.n_layer-2) whose config is the base file with the
point's settings as overrides: it has its own checkpoints, model, samples and eval, shares the
prepared data with the other points (equal data settings), and an added point leaves the
finished ones as they are. A point that diverges stops early and is recorded as diverged
(train.on_divergence = "stop"), so the sweep completes. Standard library only (the Snakefile).
"""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanogptx import config

SWEEPS = Path("config/sweeps")


@dataclass(frozen=True)
class Sweep:
    name: str
    base: str  # a run: config/<base>.toml
    axes: tuple[tuple[str, tuple[Any, ...]], ...]  # ("train.learning_rate", (1e-3, ...)), ...


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(value))


def load(name: str, directory: Path = SWEEPS) -> Sweep:
    """config/sweeps/<name>.toml, checked: a base run that exists, axes of section.key = [values]
    whose keys the config knows (every point is checked when it is loaded as a run)."""
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
    base = tree.get("base")
    if not isinstance(base, str) or not (Path("config") / f"{base}.toml").is_file():
        raise config.ConfigError(f"{path}: base = {base!r}: expected a run of config/ (NAME.toml)")
    axes = tree.get("axes")
    if not isinstance(axes, dict) or not axes:
        raise config.ConfigError(f"{path}: [axes] must hold at least one section.key = [values]")
    out = []
    for key, values in axes.items():
        keys = key.split(",")
        for k in keys:
            section, _, field = k.partition(".")
            cls = config.SECTIONS.get(section)
            if cls is None or field not in cls.__dataclass_fields__:
                what = "" if len(keys) == 1 else f" {k!r} is"
                raise config.ConfigError(f"{path}: axes.{key!r}:{what} not a config key "
                                         "(section.key)")  # fmt: skip
        if not isinstance(values, list) or not values or len(set(map(repr, values))) < len(values):
            raise config.ConfigError(f"{path}: axes.{key}: expected a list of distinct values")
        if len(keys) > 1:
            bad = [v for v in values if not isinstance(v, list) or len(v) != len(keys)]
            if bad:
                raise config.ConfigError(f"{path}: axes.{key!r}: {bad[0]!r}: expected a list of "
                                         f"{len(keys)} values, one per key")  # fmt: skip
            values = [tuple(v) for v in values]
        out.append((key, tuple(values)))
    return Sweep(name, base, tuple(out))


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
    for point in itertools.product(*(values for _, values in sweep.axes)):
        pairs = []
        for (key, _), value in zip(sweep.axes, point, strict=True):
            group = key.split(",")
            pairs += zip(group, value if len(group) > 1 else [value], strict=True)
        parts = [f"{k.partition('.')[2]}-{_value_text(v)}" for k, v in pairs]
        name = config.check_run_name(".".join([sweep.name, *parts]))
        runs[name] = [f"{k}={config._toml_value(v)}" for k, v in pairs] + fixed
    return runs
