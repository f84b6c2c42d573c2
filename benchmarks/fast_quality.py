"""Quality of the fast path's compressed weights: WikiText-2 validation perplexity of the default
model with fp32 weights and with each compressed format, on the same token windows.

    .venv/bin/python benchmarks/fast_quality.py [--data-dir /work/shared/data] [--windows 16]

The compressed formats are simulated exactly: each weight matrix is replaced by its compressed
value converted back to fp32 (`repl.fast.dequantized`), which is what the fast path's kernels
multiply by. Windows are non-overlapping 512-token blocks from the start of wiki.valid.raw.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout


def perplexity(model, blocks) -> float:
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for block in blocks:
            out = model(block[None], labels=block[None])
            total += float(out.loss) * (block.shape[0] - 1)
            count += block.shape[0] - 1
    return math.exp(total / count)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/work/shared/data")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--formats", default="int8,bf16")
    args = parser.parse_args(argv)

    import torch

    from repl.fast import dequantized
    from repl.models import load_model

    text = (Path(args.data_dir) / "wikitext-2-raw-v1" / "wiki.valid.raw").read_text()
    loaded = load_model("default", device="cpu")
    ids = torch.tensor(loaded.tokenizer(text[:400_000]).input_ids)
    blocks = [ids[i * args.block:(i + 1) * args.block] for i in range(args.windows)]
    assert all(b.shape[0] == args.block for b in blocks), "not enough text for that many windows"
    model = loaded.model
    originals = {name: p.detach().clone() for name, p in model.named_parameters() if p.dim() == 2}
    base = perplexity(model, blocks)
    print(f"WikiText-2 validation, {args.windows} x {args.block} tokens "
          f"({args.windows * args.block} tokens), SmolLM2-135M-Instruct")
    print("| weights | perplexity | vs fp32 |\n|---|---:|---:|")
    print(f"| fp32 | {base:.3f} | - |")
    for fmt in args.formats.split(","):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in originals:
                    p.copy_(dequantized(originals[name], fmt))
        ppl = perplexity(model, blocks)
        print(f"| {fmt} | {ppl:.3f} | {100 * (ppl / base - 1):+.2f}% |")
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in originals:
                    p.copy_(originals[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
