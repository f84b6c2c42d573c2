"""Training throughput on CPU: textgen-train (packed blocks) vs the WikiText-2 tutorial setup.

The tutorial setup is a plain transformers `Trainer` on lines of WikiText-2, each padded (or cut)
to 64 tokens, batch 8, `DataCollatorForLanguageModeling(mlm=False)`. textgen-train packs the same
lines (EOS between them) into 64-token blocks, batch 8, so both do the same compute per step.
Throughput counts only real (non-padding) tokens. Empty lines are dropped for both (kinder to the
tutorial setup, which would otherwise spend whole rows on padding).

Model: a random GPT-2-shaped model, 4 layers, 4 heads, 256 wide, 256 positions, GPT-2's
50,257-token vocabulary (16.1M parameters), from tests/tiny_models.py. Same data, same number of
steps, same process; each trainer runs `--rounds` times alternately and its best round counts, so
load from other processes on the machine skews both alike.

    .venv/bin/python benchmarks/train_throughput.py [--data-dir DIR] [--steps 30] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 256, "n_positions": 256}
SEQ = 64
BATCH = 8


def load_lines(data_dir: Path, count: int) -> list[str]:
    rows = (data_dir / "wiki.train.tokens").read_text().splitlines()
    lines = [row.strip() for row in rows if row.strip()]
    return lines[:count]


def tutorial_run(model_dir: Path, lines: list[str], steps: int, work: Path) -> dict:
    """The tutorial recipe: pad every line to 64 tokens, batch 8, plain Trainer."""
    import datasets
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    rows = datasets.Dataset.from_dict({"text": lines[: steps * BATCH]}).map(
        lambda b: tokenizer(b["text"], padding="max_length", truncation=True, max_length=SEQ),
        batched=True, remove_columns=["text"])
    real = int(sum(sum(mask) for mask in rows["attention_mask"]))
    args = TrainingArguments(output_dir=str(work / "tutorial"), per_device_train_batch_size=BATCH,
                             max_steps=steps, learning_rate=5e-5, logging_steps=10,
                             save_strategy="no", report_to="none", disable_tqdm=True,
                             use_cpu=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    total = steps * BATCH * SEQ
    return {"trainer": "tutorial (pad to 64)", "steps": steps, "real_tokens": real,
            "padding_tokens": total - real, "wall_s": wall, "tokens_per_s": real / wall}


def textgen_run(model_dir: Path, lines: list[str], steps: int, work: Path, round_: int) -> dict:
    """textgen-train's own pipeline on the same lines, 64-token packed blocks, batch 8."""
    from trainer.data import DataSpec
    from trainer.train import TrainOptions, run_training

    source = work / "lines.jsonl"
    source.write_text("\n".join(json.dumps({"text": line}) for line in lines) + "\n")
    options = TrainOptions(model=str(model_dir), output=work / f"textgen-{round_}",
                           data=DataSpec(train_files=[str(source)], valid_fraction=0.001),
                           max_steps=steps, block_size=SEQ, batch_size=BATCH, eval_blocks=1,
                           save_steps=10_000, cache_dir=work / "cache", precision="fp32")
    report = run_training(options).report
    real = steps * BATCH * SEQ
    return {"trainer": "textgen-train (packed)", "steps": steps, "real_tokens": real,
            "padding_tokens": 0, "wall_s": report["wall_time_s"],
            "tokens_per_s": real / report["wall_time_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/work/shared/data/wikitext-2-v1"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    from tests.tiny_models import save_random_gpt2

    hf_logging.set_verbosity_error()
    # The tutorial needs steps*8 lines; packing the same lines gives more than steps*8 blocks
    # of real text, so both runs take exactly `steps` steps over the same text.
    lines = load_lines(args.data_dir, args.steps * BATCH)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = save_random_gpt2(work / "model", SHAPE)
        best: dict[str, dict] = {}
        for round_ in range(args.rounds):
            for result in (tutorial_run(model_dir, lines, args.steps, work),
                           textgen_run(model_dir, lines, args.steps, work, round_)):
                name = result["trainer"]
                if name not in best or result["tokens_per_s"] > best[name]["tokens_per_s"]:
                    best[name] = result
    print(f"\nGPT-2 shape {SHAPE}, seq {SEQ}, batch {BATCH}, {args.steps} steps, CPU fp32, "
          f"best of {args.rounds} rounds; {len(lines)} non-empty WikiText-2 train lines")
    print(f"{'trainer':<24} {'steps':>5} {'real tokens':>12} {'padding':>8} {'wall s':>7} "
          f"{'real tok/s':>10}")
    for r in best.values():
        print(f"{r['trainer']:<24} {r['steps']:>5} {r['real_tokens']:>12,} "
              f"{r['padding_tokens']:>8,} {r['wall_s']:>7.1f} {r['tokens_per_s']:>10,.0f}")
    ours = best["textgen-train (packed)"]["tokens_per_s"]
    theirs = best["tutorial (pad to 64)"]["tokens_per_s"]
    print(f"ratio (textgen-train / tutorial), real tokens per second: {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
