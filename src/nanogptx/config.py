"""Loading, checking and the identities of a run's config (schema.py declares its settings).

    cfg = load("config/shakespeare-char.toml", ["train.max_iters=100"])

Identities (data_id, checkpoint_id, program_config) follow from the settings' roles; stdlib only.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

from nanogptx import schema
from nanogptx.errors import UserError, suggest

# The schema's names that the stages use, as config.X.
from nanogptx.schema import (  # noqa: F401
    CUDNN_HEAD_MULTIPLE,
    CUDNN_MAX_HEAD,
    GPT2_ARCHITECTURE,
    GPT2_CHECKPOINTS,
    MAX_TOKENS,
    NOT_DATA_IDENTITY,
    RESUME_KEYS,
    RUNTIME_KEYS,
    SECTIONS,
    STAGE_SECTIONS,
    Config,
    DataConfig,
    EvalConfig,
    LoggingConfig,
    ModelConfig,
    SampleConfig,
    TokenizerConfig,
    TrainConfig,
)


class ConfigError(UserError, ValueError):
    """A config value that is unknown, of the wrong type, or impossible."""


# HF's activation_function names for the activations GPT-2 can have.
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
# HF GPT-2 config.json's sizes, by our names; its attention variants that we only have as these.
HF_SIZES = {"n_layer": "n_layer", "n_head": "n_head", "n_embd": "n_embd",
            "n_positions": "block_size", "vocab_size": "vocab_size"}  # fmt: skip
HF_FIXED = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False}  # fmt: skip


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
    for key, ours in HF_SIZES.items():
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
    for key, want in HF_FIXED.items():
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
            f"{list(GPT2_CHECKPOINTS)}{suggest(init_from, GPT2_CHECKPOINTS)}, or a directory "
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


def _check_field(f: dataclasses.Field, value: Any, key: str, source: str) -> None:
    """A field's own check: its choices (a list's, each item's), then its check."""
    choices, check = f.metadata.get("choices"), f.metadata.get("check")
    for item in value if isinstance(value, tuple) and choices else [value] if choices else []:
        if item not in choices:
            expected = f"one of {list(choices)}{suggest(str(item), map(str, choices))}"
            raise ConfigError(f"{source}: {key} = {item!r}: expected {expected}")
    if check and not check[0](value):
        shown = list(value) if isinstance(value, tuple) else value
        raise ConfigError(f"{source}: {key} = {shown!r}: expected {check[1]}")


def validate(cfg: Config, source: str, registry: bool = True, tokenizer_known: bool = True) -> None:
    """Every field's own check, then each section's rules; with registry, data.dataset against
    its dataset file. tokenizer_known: the config says which tokenizer the model has (a run's
    file does; the defaults with a stage's overrides may not, and the stage checks its model)."""
    for name in SECTIONS:
        for f in dataclasses.fields(section := getattr(cfg, name)):
            _check_field(f, getattr(section, f.name), f"{name}.{f.name}", source)
    if registry:
        check_dataset(cfg.data.dataset, source)
    for name in SECTIONS:
        for ok, key, expected in getattr(cfg, name).rules(cfg):
            if not ok:
                value = getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1])
                raise ConfigError(f"{source}: {key} = {value!r}: expected {expected}")
    from nanogptx import evaltasks  # light: the task registry is plain data

    tokenizer = cfg.tokenizer.name if tokenizer_known else None
    if problem := evaltasks.problem(cfg.eval.tasks, tokenizer, registry, cfg.eval.max_items):
        raise ConfigError(f"{source}: {problem}")


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
    tokenizer_known: see validate."""
    sections = {}
    for name, values in tree.items():
        if name not in SECTIONS and not isinstance(values, dict):
            owners = [s for s, cls in SECTIONS.items() if name in typing.get_type_hints(cls)]
            hint = f"; put it under [{owners[0]}] (as {owners[0]}.{name})" if owners else ""
            raise ConfigError(f"{source}: key {name!r} is outside any [section]{hint}")
        if name not in SECTIONS:
            raise ConfigError(
                f"{source}: unknown section [{name}]{suggest(name, SECTIONS)}; "
                f"known sections: {', '.join(SECTIONS)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table of key = value")
        cls = SECTIONS[name]
        hints = typing.get_type_hints(cls)
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(
                    f"{source}: unknown key {name}.{key}{suggest(key, hints)}; "
                    f"known keys of [{name}]: {', '.join(hints)}"
                )
            if f"{name}.{key}" in AUTO and isinstance(value, str):
                value = _auto(value, f"{name}.{key}", source)
            values[key] = _check_type(value, hints[key], f"{source}: {name}.{key}")
        sections[name] = cls(**values)
    cfg = _resolve_init(Config(**sections), tree.get("model", {}), source)
    validate(cfg, source, registry, tokenizer_known)
    return cfg


# Keys whose 0 means "chosen for you", which a file or an override may also spell "auto".
AUTO = {"train.batch_size": "auto"}


def _auto(value: str, key: str, source: str) -> int:
    """The word for 0 of an AUTO key: the same config, identity and checkpoints."""
    if value != AUTO[key]:
        raise ConfigError(f"{source}: {key}: expected an int, or {AUTO[key]!r} (0), got {value!r}")
    return 0


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
    """The settings that make the prepared bytes: [data]'s and [tokenizer]'s whose role is data."""
    names = STAGE_SECTIONS["prepare"]
    keys = {f"{n}.{k}" for n in names for k in schema.keys_with(n, lambda r: r.data)}
    return settings(cfg, names, keys)


def data_id(cfg: Config) -> str:
    """Directory name of the prepared data: runs with equal data settings share it."""
    return f"{cfg.data.dataset}-{cfg.tokenizer.name}-{_sha256(data_settings(cfg))[:10]}"


def resume_settings(cfg: Config) -> list[str]:
    """What a checkpoint must share with the run resuming from it: the data, and the settings
    of the train stage whose role names the checkpoint (the model's, RESUME_KEYS)."""
    names = STAGE_SECTIONS["train"]
    keys = {f"{n}.{k}" for n in names for k in schema.keys_with(n, lambda r: r.resume)}
    return [*settings(cfg, names, keys), f"data_id={data_id(cfg)}"]


def checkpoint_id(cfg: Config) -> str:
    """Directory name of a run's checkpoints: changes exactly when a resume would be refused."""
    return _sha256(resume_settings(cfg))[:10]


def program_config(cfg: Config) -> Config:
    """cfg with every setting whose role does not reach the compiled steps at its default: the
    steps' cache key (an unmarked setting stays as set: a recompile, never a stale step)."""
    out = {}
    for name, cls in SECTIONS.items():
        keep = {
            k: getattr(getattr(cfg, name), k) for k in schema.keys_with(name, lambda r: r.program)
        }
        out[name] = cls(**keep)
    return Config(**out)


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
        hint = suggest(unknown, known)
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


def describe(
    names: typing.Iterable[str] = SECTIONS, only: typing.Collection[str] | None = None
) -> str:
    """Every key of the named sections (or only those named "section.key") with its type,
    default, meaning and, where the values are fixed, its choices (for --help); a note when the
    stage reads only some sections or keys."""
    names = list(names)
    head = (
        "config keys (set in the TOML file or as section.key=value; [role]: what editing changes)"
    )
    lines = [head + ":"]
    for name in names:
        cls = SECTIONS[name]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if only is not None and f"{name}.{f.name}" not in only:
                continue
            tp = hints[f.name]
            tname = "list[str]" if typing.get_origin(tp) is tuple else tp.__name__
            default, role = _toml_value(f.default), schema.role(f).name
            lines.append(f"  {name}.{f.name} ({tname}, default {default}) [{role}]")
            lines.append(f"      {f.metadata['help']}")
            if f.metadata.get("choices"):
                lines.append(f"      choices: {', '.join(map(str, f.metadata['choices']))}")
    if only is not None:
        lines.append("(a run's file may hold other keys too: this stage reads only these)")
    elif set(names) != set(SECTIONS):
        others = ", ".join(f"[{n}]" for n in SECTIONS if n not in names)
        lines.append(f"(a run's file may hold {others} too: this stage does not read them)")
    return "\n".join(lines)


def add_arguments(
    parser: argparse.ArgumentParser,
    names: typing.Iterable[str],
    only: typing.Collection[str] | None = None,
) -> None:
    """--config FILE and section.key=value overrides; the key list goes into --help."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = describe(names, only)
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
