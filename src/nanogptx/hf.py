"""GPT-2 weights in Hugging Face's layout, in and out: config.json + model.safetensors as
transformers' GPT2LMHeadModel saves and loads them (model.init_from loads OpenAI's; the export
stage writes ours). HF's Conv1D weights are (in, out), our layout: no transpose; per-layer
tensors h.<i>.* are stacked on our leading layer axis. Only numpy and safetensors, no torch:
`params = hf.load_params("data/raw/hf-gpt2", cfg.model)`, `hf.save(params, cfg.model, DIR)`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy
from safetensors import safe_open

from nanogptx import provenance
from nanogptx.config import ModelConfig
from nanogptx.errors import UserError
from nanogptx.model import mlp_width, vocab_rows

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
# Ours <- HF's, per layer (h.<i>.<name>) and at the top.
LAYER_NAMES = {
    "ln1_g": "ln_1.weight", "ln1_b": "ln_1.bias",
    "attn_w": "attn.c_attn.weight", "attn_b": "attn.c_attn.bias",
    "attn_proj_w": "attn.c_proj.weight", "attn_proj_b": "attn.c_proj.bias",
    "ln2_g": "ln_2.weight", "ln2_b": "ln_2.bias",
    "fc_w": "mlp.c_fc.weight", "fc_b": "mlp.c_fc.bias",
    "fc_proj_w": "mlp.c_proj.weight", "fc_proj_b": "mlp.c_proj.bias",
}  # fmt: skip
TOP_NAMES = {"wte": "wte.weight", "wpe": "wpe.weight", "lnf_g": "ln_f.weight", "lnf_b": "ln_f.bias"}
# Buffers older GPT-2 checkpoints carry (the causal mask): not parameters.
BUFFERS = (".attn.bias", ".attn.masked_bias")


class HFError(UserError, ValueError):
    """A checkpoint that does not hold the GPT-2 it should, or a model GPT-2 cannot express."""


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, "transformer." prefixes dropped, buffers left out."""
    try:
        with safe_open(str(path), "np") as f:
            names = list(f.keys())  # noqa: SIM118 (safe_open API)
            tensors = {
                n.removeprefix("transformer."): f.get_tensor(n)
                for n in names
                if not n.endswith(BUFFERS)
            }
    except FileNotFoundError:
        raise HFError(f"{path} does not exist: expected GPT-2 weights in safetensors") from None
    except (OSError, safetensors.SafetensorError, TypeError) as e:
        raise HFError(f"{path}: cannot read it as safetensors: {e}") from None
    return tensors


def load_params(path: str | Path, m: ModelConfig) -> dict[str, Any]:
    """Our params (numpy float32) from the HF GPT-2 weights at path (a directory holding
    model.safetensors, or the file), for the architecture m (config.pretrained_architecture):
    the vocabulary padded with zero rows to vocab_rows(m), the positions cropped to
    m.block_size. A missing, unexpected or misshapen tensor raises HFError naming it."""
    path = Path(path)
    file = path / WEIGHTS if path.is_dir() else path
    tensors = read_tensors(file)
    check_tensors(tensors, m, file)
    N, D, V = m.n_layer, m.n_embd, m.vocab_size

    def f32(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float32)

    rows = vocab_rows(m)
    wte = np.zeros((rows, D), np.float32)
    wte[:V] = tensors["wte.weight"]
    params: dict[str, Any] = {"wte": wte, "wpe": f32(tensors["wpe.weight"][: m.block_size])}
    params["blocks"] = {
        ours: f32(np.stack([tensors[f"h.{i}.{hf}"] for i in range(N)]))
        for ours, hf in LAYER_NAMES.items()
    }
    params["lnf_g"], params["lnf_b"] = f32(tensors["ln_f.weight"]), f32(tensors["ln_f.bias"])
    if not m.tie_embeddings:
        head = np.zeros((D, rows), np.float32)
        head[:, :V] = tensors["lm_head.weight"].T
        params["head_w"] = head
    return params


def check_tensors(tensors: dict[str, np.ndarray], m: ModelConfig, file: Path) -> None:
    """Raise HFError naming each tensor of file that is missing, unexpected, or shaped unlike
    GPT-2's of architecture m (wpe: at least m.block_size positions)."""
    N, D, V = m.n_layer, m.n_embd, m.vocab_size
    F = m.mlp_width or 4 * D
    wanted = {
        "wte.weight": (V, D), "ln_f.weight": (D,), "ln_f.bias": (D,),
        **{f"h.{i}.{hf}": shape for i in range(N) for hf, shape in (
            ("ln_1.weight", (D,)), ("ln_1.bias", (D,)),
            ("attn.c_attn.weight", (D, 3 * D)), ("attn.c_attn.bias", (3 * D,)),
            ("attn.c_proj.weight", (D, D)), ("attn.c_proj.bias", (D,)),
            ("ln_2.weight", (D,)), ("ln_2.bias", (D,)),
            ("mlp.c_fc.weight", (D, F)), ("mlp.c_fc.bias", (F,)),
            ("mlp.c_proj.weight", (F, D)), ("mlp.c_proj.bias", (D,)),
        )},
    }  # fmt: skip
    if not m.tie_embeddings:
        wanted["lm_head.weight"] = (V, D)
    missing = [n for n in wanted if n not in tensors]
    if "wpe.weight" not in tensors:
        missing.insert(0, "wpe.weight")
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise HFError(f"{file}: missing tensors {', '.join(missing[:5])}{more}")
    extra = [n for n in tensors if n not in wanted and n not in ("wpe.weight", "lm_head.weight")]
    if extra:
        raise HFError(f"{file}: unexpected tensors {', '.join(sorted(extra)[:5])}: not GPT-2's")
    for name, shape in wanted.items():
        if tensors[name].shape != shape:
            raise HFError(
                f"{file}: tensor {name} has shape {list(tensors[name].shape)}, expected "
                f"{list(shape)} (against the config's n_layer {N}, n_embd {D}, vocab {V})"
            )
    wpe = tensors["wpe.weight"]
    if wpe.ndim != 2 or wpe.shape[1] != D or wpe.shape[0] < m.block_size:
        raise HFError(
            f"{file}: tensor wpe.weight has shape {list(wpe.shape)}, expected at least "
            f"[{m.block_size}, {D}] (model.block_size, n_embd)"
        )


def unsupported(m: ModelConfig) -> list[str]:
    """The features of m that HF's GPT-2 cannot express (none: exportable)."""
    out = []
    if m.position != "learned":
        out.append(f"model.position = {m.position!r} (GPT-2 has learned positions)")
    if m.norm != "layernorm":
        out.append(f"model.norm = {m.norm!r} (GPT-2 has LayerNorm)")
    if m.qk_norm:
        out.append("model.qk_norm = true (GPT-2 has no QK-norm)")
    if m.activation not in ("gelu", "gelu_tanh"):
        out.append(f"model.activation = {m.activation!r} (GPT-2 has GELU)")
    if m.n_kv_head not in (0, m.n_head):
        out.append(f"model.n_kv_head = {m.n_kv_head} (GPT-2 has as many key/value heads as heads)")
    if m.logit_softcap:
        out.append(f"model.logit_softcap = {m.logit_softcap} (GPT-2 has no soft-capping)")
    return out


def check_expressible(m: ModelConfig, where: str = "") -> None:
    """Raise HFError naming every feature of m that HF's GPT-2 cannot express."""
    if problems := unsupported(m):
        prefix = f"{where}: " if where else ""
        raise HFError(f"{prefix}Hugging Face's GPT-2 cannot express {'; '.join(problems)}")


def hf_config(m: ModelConfig) -> dict[str, Any]:
    """transformers' GPT2Config of m, as config.json."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_layer": m.n_layer,
        "n_head": m.n_head,
        "n_embd": m.n_embd,
        "n_positions": m.block_size,
        "n_ctx": m.block_size,
        "n_inner": None if mlp_width(m) == 4 * m.n_embd else mlp_width(m),  # None: HF's 4 D
        "vocab_size": m.vocab_size,
        "activation_function": "gelu_new" if m.activation == "gelu_tanh" else "gelu",
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": m.tie_embeddings,
        "resid_pdrop": m.dropout,
        "embd_pdrop": m.dropout,
        "attn_pdrop": m.dropout,
        "bos_token_id": 50256 if m.vocab_size == 50257 else None,
        "eos_token_id": 50256 if m.vocab_size == 50257 else None,
        "torch_dtype": "float32",
    }


def to_tensors(params: dict[str, Any], m: ModelConfig) -> dict[str, np.ndarray]:
    """HF GPT2LMHeadModel's tensors of our params: padded vocabulary rows stripped, biases and
    gains a model lacks written as zeros and ones (the same function)."""
    check_expressible(m)
    V, D = m.vocab_size, m.n_embd
    blocks = {k: np.asarray(v, np.float32) for k, v in params["blocks"].items()}
    N = m.n_layer
    F = blocks["fc_w"].shape[-1]

    def layer(ours: str, i: int) -> np.ndarray:
        if ours in blocks:
            return blocks[ours][i]
        width = F if ours == "fc_b" else 3 * D if ours == "attn_b" else D
        return np.ones(width, np.float32) if ours.endswith("_g") else np.zeros(width, np.float32)

    def top(ours: str) -> np.ndarray:
        if ours in params:
            return np.asarray(params[ours], np.float32)
        return np.ones(D, np.float32) if ours.endswith("_g") else np.zeros(D, np.float32)

    out = {f"transformer.{hf}": top(ours) for ours, hf in TOP_NAMES.items()}
    out["transformer.wte.weight"] = out["transformer.wte.weight"][:V]
    for i in range(N):
        out |= {f"transformer.h.{i}.{hf}": layer(ours, i) for ours, hf in LAYER_NAMES.items()}
    if not m.tie_embeddings:
        out["lm_head.weight"] = np.asarray(params["head_w"], np.float32)[:, :V].T
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save(params: dict[str, Any], m: ModelConfig, out_dir: str | Path) -> list[Path]:
    """config.json and model.safetensors of a GPT2LMHeadModel into out_dir (each written
    atomically); returns their paths. A model GPT-2 cannot express raises HFError first."""
    tensors = to_tensors(params, m)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blob = safetensors.numpy.save(tensors, metadata={"format": "pt"})
    provenance.write_bytes_atomic(out / WEIGHTS, blob)
    text = json.dumps(hf_config(m), indent=2) + "\n"
    provenance.write_bytes_atomic(out / CONFIG, text.encode())
    return [out / CONFIG, out / WEIGHTS]
