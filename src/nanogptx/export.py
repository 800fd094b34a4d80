"""Export a trained model as Hugging Face transformers' GPT-2 (config.json, model.safetensors,
provenance.json); a feature GPT-2 cannot express is refused before anything is written.

    python -m nanogptx.export --model results/RUN/model --out DIR --format hf
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nanogptx import checkpoint, config, hf, provenance
from nanogptx.errors import UserError

FORMATS = ("hf",)


def export(model_dir: str | Path, out_dir: str | Path, fmt: str = "hf") -> list[Path]:
    """Write the model in model_dir into out_dir in format fmt; returns the files written."""
    if fmt not in FORMATS:
        raise hf.HFError(f"--format {fmt!r}: expected one of {list(FORMATS)}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    record = provenance.Record.start("export", {"format": fmt})
    provenance.check_apart(out_dir, "--out", [("--model", model_dir)])  # before any work
    params, cfg, _ = checkpoint.load_model(model_dir)
    sha = checkpoint.check_model_hash(model_dir)
    hf.check_expressible(cfg.model, str(model_dir))  # before the directory is made
    with provenance.exclusive(out_dir, "export", inputs=[("--model", model_dir)], stage="export"):
        paths = hf.save(params, cfg.model, out_dir)
        record.finish(
            out_dir,
            inputs=[provenance.file_entry(model_dir / checkpoint.MODEL_FILES[0], sha)],
            outputs=[provenance.file_entry(p) for p in paths],
            extra={"model_config": config.to_dict(cfg.model), "format": fmt},
        )
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nanogptx.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", type=Path, required=True, help="trained model directory")
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    parser.add_argument("--format", default="hf", choices=FORMATS, help="hf: transformers GPT-2")
    args = parser.parse_args(argv)
    try:
        paths = export(args.model, args.out, args.format)
    except (UserError, OSError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {', '.join(str(p) for p in paths)}")


if __name__ == "__main__":
    main()
