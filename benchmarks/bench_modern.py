"""The modern recipe against the GPT-2 one, in one run on this machine: validation loss against
training time (issue 9's target: the GPT-2 recipe's step-2000 loss, whole val split, in at
most half its time).

    python benchmarks/bench_modern.py [--out modern-vs-gpt2.svg] [--repeats 1]

Trains config/shakespeare-char.toml and config/shakespeare-char-modern.toml on the same prepared
Tiny Shakespeare (from ../shared/assets), alternating when --repeats > 1 (the fastest of each is
kept), and prints each one's training seconds (the train steps' own time, as ms/iter sums it:
no compile, no evaluation) and the wall seconds of the whole train stage (compiles and
evaluations too), ms/iter, the estimate at every evaluation, and the loss over the whole
validation split at the end, with both ratios. Writes both curves (the validation estimate
against the stage's wall seconds, from the eval records' wall_s; the whole split's loss in the
legend) as SVG.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import bench_train
from bench_train import ASSETS, ROOT, prepare_recipe

RECIPES = {
    "gpt2": ROOT / "config" / "shakespeare-char.toml",
    "modern": ROOT / "config" / "shakespeare-char-modern.toml",
}


def run(name: str, data: Path, work: Path, overrides: list[str]) -> dict:
    """One full training of a recipe through bench_train.run (which prints its evaluations)."""
    from nanogptx import config

    cfg = config.load(RECIPES[name], ["train.checkpoint_interval=0", *overrides])
    return bench_train.run(cfg, data, work, True, name)


def svg(results: dict[str, dict]) -> str:
    from nanogptx import figures

    series = [
        (f"{name} val", figures.color(i), "val", r["wall_curve"])
        for i, (name, r) in enumerate(results.items())
    ]
    keys = [
        (f"{name}: {r['steps']} steps, {r['wall']:.0f} s, whole val {r['whole']:.4f}",
         figures.color(i))
        for i, (name, r) in enumerate(results.items())
    ]  # fmt: skip

    def draw():  # one report panel and its key
        fig = figures.figure(figures.W + 330, figures.H)
        figures.panel(fig.subplots(), series, "wall seconds of the train stage",
                      "val loss (estimate)")  # fmt: skip
        figures.legend(fig, keys, loc="outside right upper")
        return fig

    return figures.svg("modern recipe against GPT-2's", draw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("modern-vs-gpt2.svg"))
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs of each")
    parser.add_argument("--mirror", type=Path, default=ASSETS)
    parser.add_argument("overrides", nargs="*", help="section.key=value for the modern recipe")
    args = parser.parse_args()
    data = prepare_recipe(RECIPES["gpt2"], args.mirror)
    best: dict[str, dict] = {}
    for i in range(args.repeats):
        for name in RECIPES:
            work = Path(tempfile.mkdtemp(prefix=f"nanogptx-modern-{i}-"))
            r = run(name, data, work, args.overrides if name == "modern" else [])
            print(
                f"{name} #{i}: {r['steps']} steps, {r['seconds']:.1f} training seconds, "
                f"median {r['ms']:.1f} ms/iter, val {r['estimate']:.4f}, whole val {r['whole']:.4f}"
            )
            if name not in best or r["seconds"] < best[name]["seconds"]:
                best[name] = r
    g, m = best["gpt2"], best["modern"]
    for name, r in best.items():
        points = ", ".join(f"{s:.0f} s {v:.4f}" for s, v in r["curve"])
        print(f"{name}: val loss at training seconds: {points}")
        points = ", ".join(f"{s:.0f} s {v:.4f}" for s, v in r["wall_curve"])
        print(f"{name}: val loss at wall seconds of the stage: {points}")
    reached = "reached" if m["whole"] <= g["whole"] else "NOT reached"
    for what, key in (("training seconds", "seconds"), ("wall seconds of the stage", "wall")):
        ratio = m[key] / g[key]
        print(f"\n{what} (train.train whole: compiles and evaluations too)" if key == "wall"
              else f"\n{what} (the train steps' own time)")  # fmt: skip
        print(f"  modern: whole val {m['whole']:.4f} in {m[key]:.1f} s; gpt2: whole val "
              f"{g['whole']:.4f} in {g[key]:.1f} s; ratio {ratio:.2f} ({reached} in "
              f"{'at most' if ratio <= 0.5 else 'MORE than'} half the time)")  # fmt: skip
    args.out.write_text(svg(best))
    print(f"curves written to {args.out}")


if __name__ == "__main__":
    main()
