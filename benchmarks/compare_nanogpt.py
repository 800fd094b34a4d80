"""Our trainer against nanoGPT's from the same start: do they give the same losses?

    git clone https://github.com/karpathy/nanoGPT ~/nanoGPT && pip install torch
    python benchmarks/compare_nanogpt.py --nanogpt ~/nanoGPT [--seeds 1337,1,2] [--skip-torch]

A training run's losses depend on its random draws (initial weights, batch windows) as much as on
the code: on nanoGPT's shakespeare-char CPU recipe, nine seeds of nanoGPT itself end between 1.87
and 1.93 on its 20-batch validation estimate. To compare the code alone, this script takes the
draws from nanoGPT: its own model.py builds the initial weights under torch.manual_seed(seed), and
torch.randint draws every batch window in the order nanoGPT's train.py does (first train batch,
then at each evaluation 20 train and 20 val batches, then one prefetch per step). Both trainers
then run the recipe (config/shakespeare-char.toml) on those weights and windows:

- nanoGPT: its GPT and configure_optimizers, with train.py's loop (get_lr, clip 1.0, AdamW), and
- nanogptx: our model, optimizer and compiled train step (nanogptx.train), in JAX.

It prints both trainers' evaluations side by side, the largest difference between their per-step
training losses, and the validation loss at the last step: the 20-batch estimate and the loss over
the whole validation split; with several seeds, their spread. Tiny Shakespeare comes from
../shared/assets through the real download and prepare stages, as in bench_train.py. Needs torch
and a nanoGPT checkout; neither is a dependency of nanogptx.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import RECIPE, prepare_recipe, whole_split_loss  # noqa: E402

from nanogptx import loader  # noqa: E402


def nanogpt_draws(seed: int, cfg, data, nanogpt: Path):
    """nanoGPT's initial model and every batch window its train.py draws, in its order."""
    import torch

    sys.path.insert(0, str(nanogpt))
    from model import GPT, GPTConfig  # nanoGPT's model.py

    m, t = cfg.model, cfg.train
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(
        n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size,
        bias=m.bias, vocab_size=data.vocab_size, dropout=m.dropout,
    ))  # fmt: skip
    n_train, n_val = data.split("train").n_tokens, data.split("val").n_tokens

    def draw(n_tokens: int) -> np.ndarray:
        return torch.randint(n_tokens - m.block_size, (t.batch_size,)).numpy()

    train_starts, evals = [draw(n_train)], {}
    for it in range(t.max_iters + 1):
        if it % t.eval_interval == 0:
            evals[it] = {
                split: [draw(n) for _ in range(t.eval_iters)]
                for split, n in (("train", n_train), ("val", n_val))
            }
        if it < t.max_iters:
            train_starts.append(draw(n_train))  # the prefetch inside the step
    return gpt, train_starts[: t.max_iters], evals


def to_params(gpt, n_layer: int, bias: bool) -> dict:
    """nanoGPT's state dict as our parameter pytree (torch Linear weights are out x in)."""
    sd = {k: v.detach().numpy().copy() for k, v in gpt.state_dict().items()}

    def stack(name: str, transpose: bool = False) -> np.ndarray:
        ws = [sd[f"transformer.h.{i}.{name}"] for i in range(n_layer)]
        return np.stack([w.T if transpose else w for w in ws])

    blocks = {
        "ln1_g": stack("ln_1.weight"),
        "attn_w": stack("attn.c_attn.weight", True),
        "attn_proj_w": stack("attn.c_proj.weight", True),
        "ln2_g": stack("ln_2.weight"),
        "fc_w": stack("mlp.c_fc.weight", True),
        "fc_proj_w": stack("mlp.c_proj.weight", True),
    }
    params = {
        "wte": sd["transformer.wte.weight"],
        "wpe": sd["transformer.wpe.weight"],
        "blocks": blocks,
        "lnf_g": sd["transformer.ln_f.weight"],
    }
    if bias:
        blocks |= {
            "ln1_b": stack("ln_1.bias"),
            "attn_b": stack("attn.c_attn.bias"),
            "attn_proj_b": stack("attn.c_proj.bias"),
            "ln2_b": stack("ln_2.bias"),
            "fc_b": stack("mlp.c_fc.bias"),
            "fc_proj_b": stack("mlp.c_proj.bias"),
        }
        params["lnf_b"] = sd["transformer.ln_f.bias"]
    return params


def train_nanogpt(gpt, cfg, data, train_starts: list, evals: dict) -> dict:
    """nanoGPT's train.py loop (float32 on CPU, no gradient accumulation): per-step losses and
    times, the evaluations and the final parameters (as our pytree)."""
    import torch

    t, L = cfg.train, cfg.model.block_size

    def get_lr(it: int) -> float:  # train.py's, not nanogptx.optim.schedule: a reference
        if it < t.warmup_iters:
            return t.learning_rate * (it + 1) / (t.warmup_iters + 1)
        if it > t.lr_decay_iters:
            return t.min_lr
        ratio = (it - t.warmup_iters) / (t.lr_decay_iters - t.warmup_iters)
        return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (t.learning_rate - t.min_lr)

    def tensors(split: str, starts: np.ndarray) -> tuple:
        x, y = loader.windows(data, split, starts, L)
        return torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        gpt.eval()
        out = {
            split: float(np.mean([gpt(*tensors(split, s))[1].item() for s in batches]))
            for split, batches in evals[it].items()
        }
        gpt.train()
        return out

    optimizer = gpt.configure_optimizers(t.weight_decay, t.learning_rate, (t.beta1, t.beta2), "cpu")
    run = {"losses": [], "evals": {}, "ms": []}
    for it in range(t.max_iters + 1):
        if it in evals:
            run["evals"][it] = evaluate()
        if it == t.max_iters:
            break
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it)
        _, loss = gpt(*tensors("train", train_starts[it]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gpt.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        run["losses"].append(loss.item())
        run["ms"].append(1e3 * (time.perf_counter() - t0))
    return run | {"params": to_params(gpt, cfg.model.n_layer, cfg.model.bias)}


def train_nanogptx(params: dict, cfg, data, train_starts: list, evals: dict) -> dict:
    """Our optimizer and compiled train and eval steps on the same weights and windows; returns
    what train_nanogpt does."""
    import jax

    from nanogptx import optim, runtime, steps

    runtime.keep_freed_memory(cfg.tokenizer.name)
    L = cfg.model.block_size
    optimizer = optim.make(cfg.train)
    train_step = jax.jit(steps.make_train_step(cfg, optimizer), donate_argnums=0)
    eval_step = jax.jit(steps.make_eval_step(cfg))
    state = {"params": jax.tree.map(jax.numpy.asarray, params)}
    state["opt"] = optimizer.init(state["params"])
    key = jax.random.key(0)  # unused: dropout is off in the recipe

    def evaluate() -> dict[str, float]:
        return {
            split: float(np.mean([eval_step(state["params"], *loader.windows(data, split, s, L))
                                  for s in batches]))
            for split, batches in evals[it].items()
        }  # fmt: skip

    run = {"losses": [], "evals": {}, "ms": []}
    for it in range(cfg.train.max_iters + 1):
        if it in evals:
            run["evals"][it] = evaluate()
        if it == cfg.train.max_iters:
            break
        t0 = time.perf_counter()
        x, y = loader.windows(data, "train", train_starts[it], L)
        state, stats = train_step(state, x[None], y[None], np.int32(it), key)
        run["losses"].append(float(stats["loss"]))  # waits for the step, as loss.item() does
        run["ms"].append(1e3 * (time.perf_counter() - t0))
    return run | {"params": state["params"]}


def compare(seed: int, cfg, data, args) -> dict[str, float]:
    """Both trainers on nanoGPT's draws under `seed`; prints the comparison, returns the figures."""
    print(f"\nnanoGPT's draws under torch seed {seed}; the recipe {RECIPE.name}")
    gpt, train_starts, evals = nanogpt_draws(seed, cfg, data, args.nanogpt)
    params = to_params(gpt, cfg.model.n_layer, cfg.model.bias)
    runs = {}
    t0 = time.perf_counter()
    runs["nanogptx"] = train_nanogptx(params, cfg, data, train_starts, evals)
    print(f"nanogptx trained {cfg.train.max_iters} steps in {time.perf_counter() - t0:.0f} s")
    if not args.skip_torch:
        t0 = time.perf_counter()
        runs["nanoGPT"] = train_nanogpt(gpt, cfg, data, train_starts, evals)
        print(f"nanoGPT trained {cfg.train.max_iters} steps in {time.perf_counter() - t0:.0f} s")

    names = list(runs)
    print("step  " + "  ".join(f"{n + ' train':>15} {n + ' val':>13}" for n in names))
    for it in evals:
        row = [runs[n]["evals"][it] for n in names]
        print(f"{it:4d}  " + "  ".join(f"{e['train']:15.4f} {e['val']:13.4f}" for e in row))
    # Steps after the first 10 (compilation, warm-up), timed from batch to updated parameters.
    ms = {n: statistics.median(runs[n]["ms"][10:]) for n in names}
    print("median ms/iter: " + ", ".join(f"{n} {ms[n]:.1f}" for n in names), end="")
    print(f" (nanoGPT / nanogptx = {ms['nanoGPT'] / ms['nanogptx']:.2f})" if len(runs) == 2 else "")
    if len(runs) == 2:
        diff = np.abs(np.array(runs["nanogptx"]["losses"]) - np.array(runs["nanoGPT"]["losses"]))
        print(f"per-step training loss, |nanogptx - nanoGPT|: max {diff.max():.2e} "
              f"(step {diff.argmax()}), mean {diff.mean():.2e}")  # fmt: skip
    last, figures = cfg.train.max_iters, {}
    for n in names:
        val = runs[n]["evals"][last]["val"]
        whole = whole_split_loss(runs[n]["params"], cfg.model, data)
        figures[n] = val
        figures[n + " whole"] = whole
        verdict = "<= 1.89" if val <= 1.89 else "ABOVE 1.89"
        print(f"{n}: val loss at step {last}: {val:.4f} ({verdict}); whole val split {whole:.4f}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", type=Path, required=True, help="a nanoGPT checkout")
    parser.add_argument("--seeds", default="1337", help="comma-separated torch seeds")
    parser.add_argument("--skip-torch", action="store_true", help="train only ours")
    parser.add_argument("--data", type=Path, help="prepared data directory (default: make one)")
    parser.add_argument("overrides", nargs="*", help="extra section.key=value overrides")
    args = parser.parse_args()
    if not (args.nanogpt / "model.py").is_file():
        sys.exit(f"--nanogpt {args.nanogpt}: no model.py there; expected a nanoGPT checkout")
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("this comparison needs torch: pip install torch")

    from nanogptx import config

    cfg = config.load(RECIPE, args.overrides)
    micro_tokens = cfg.train.batch_size * cfg.model.block_size
    if cfg.model.dropout or cfg.train.total_batch_tokens > micro_tokens:
        sys.exit("the comparison follows train.py without dropout or gradient accumulation")
    if cfg.train.max_iters % cfg.train.eval_interval:
        sys.exit("train.max_iters must be a multiple of train.eval_interval: both trainers are "
                 "compared at the evaluation of the last step")  # fmt: skip
    data = loader.open_prepared(args.data or prepare_recipe())
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {seed: compare(seed, cfg, data, args) for seed in seeds}
    if len(results) > 1:
        print(f"\nval loss at step {cfg.train.max_iters} on nanoGPT's draws, by seed")
        keys = list(results[seeds[0]])
        print("  seed  " + "  ".join(f"{k:>16}" for k in keys))
        for seed, r in results.items():
            print(f"  {seed:4d}  " + "  ".join(f"{r[k]:16.4f}" for k in keys))
        for k in keys:
            v = np.array([r[k] for r in results.values()])
            print(f"  {k}: mean {v.mean():.4f}, std {v.std(ddof=1):.4f}; "
                  f"{int((v <= 1.89).sum())} of {len(v)} at or below 1.89")  # fmt: skip


if __name__ == "__main__":
    main()
