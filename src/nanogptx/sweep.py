"""Sweeps: a base run and axes of settings, expanded into one ordinary run per point.

    # config/sweeps/lr.toml
    base = "tiny"                                  # config/tiny.toml
    [axes]
    "train.learning_rate" = [1e-3, 3e-3, 1e-2]
    "model.qk_norm" = [false, true]

    snakemake --cores all sweep --config sweep=lr

Each point is a run named <sweep>.<key>-<value>... (for example lr.learning_rate-0.003.qk_norm-true)
whose config is the base file with the point's settings as overrides: it has its own checkpoints,
model, samples and eval, shares the prepared data with the other points (equal data settings),
and an added point leaves the finished ones as they are. A point that diverges stops early and
is recorded as diverged (train.on_divergence = "stop"), so the sweep completes. Standard library
only (the Snakefile).
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
        section, _, field = key.partition(".")
        cls = config.SECTIONS.get(section)
        if cls is None or field not in cls.__dataclass_fields__:
            raise config.ConfigError(f"{path}: axes.{key!r}: not a config key (section.key)")
        if not isinstance(values, list) or not values or len(set(map(repr, values))) < len(values):
            raise config.ConfigError(f"{path}: axes.{key}: expected a list of distinct values")
        out.append((key, tuple(values)))
    return Sweep(name, base, tuple(out))


# A sweep's point that diverges is a result (recorded, its model written), not a failed job
# that stops the sweep; an axis of train.on_divergence overrides this.
POINT_SETTINGS = {"train.on_divergence": "stop"}


def expand(sweep: Sweep) -> dict[str, list[str]]:
    """{run name: its overrides ("section.key=value")}, one run per point of the axes' product,
    each with POINT_SETTINGS."""
    runs = {}
    keys = [k for k, _ in sweep.axes]
    fixed = [f"{k}={config._toml_value(v)}" for k, v in POINT_SETTINGS.items() if k not in keys]
    for point in itertools.product(*(values for _, values in sweep.axes)):
        pairs = list(zip(keys, point, strict=True))
        parts = [f"{k.partition('.')[2]}-{_value_text(v)}" for k, v in pairs]
        name = config.check_run_name(".".join([sweep.name, *parts]))
        runs[name] = [f"{k}={config._toml_value(v)}" for k, v in pairs] + fixed
    return runs
