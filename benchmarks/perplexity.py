"""Perplexity of several models on WikiText-2 validation, with one sliding-window method.

Every model is scored by trainer.evaluate on the same token stream (the validation articles,
EOS between them, tokenized by each model's tokenizer; the models here share SmolLM2's), with the
same window and stride, so transformers and the LSTM baseline compare like for like. On CPU a
subset (`--max-tokens`, the first N tokens) keeps this to minutes; the table says how many.

    .venv/bin/python benchmarks/perplexity.py default models/demo models/lstm-wt2 \
        [--data-dir DIR] [--max-tokens 4096] [--window 256] [--stride 128]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="SPEC")
    parser.add_argument("--data-dir", type=Path, default=Path("/work/shared/data/wikitext-2-v1"))
    parser.add_argument("--split", default="valid")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--stride", type=int, default=128)
    args = parser.parse_args()

    from repl.models import load_model
    from trainer.data import wikitext_from_dir
    from trainer.evaluate import evaluate

    documents = wikitext_from_dir(args.data_dir, [args.split])[args.split]
    rows = []
    for spec in args.models:
        loaded = load_model(spec, device="cpu")
        report = evaluate(spec, documents, str(args.data_dir), args.split, window=args.window,
                          stride=args.stride, max_tokens=args.max_tokens, samples=0,
                          progress=False, loaded=loaded)
        rows.append((spec, loaded.info, report))
        print(f"{spec}: {report.perplexity.perplexity:.2f}", file=sys.stderr)
    first = rows[0][2].perplexity
    print(f"\nWikiText-2 {args.split} from {args.data_dir}: first {first.tokens_scored + 1:,} of "
          f"{rows[0][2].total_tokens:,} tokens; window {args.window}, stride {args.stride}")
    print(f"{'model':<24} {'params':>8} {'perplexity':>11} {'tokens scored':>14} {'seconds':>8}")
    for spec, info, report in rows:
        p = report.perplexity
        print(f"{spec:<24} {info.parameters / 1e6:>7.1f}M {p.perplexity:>11.2f} "
              f"{p.tokens_scored:>14,} {p.seconds:>8.1f}")


if __name__ == "__main__":
    main()
