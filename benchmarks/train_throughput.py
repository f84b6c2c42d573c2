"""Training throughput on CPU: textgen-train (packed blocks) vs the WikiText-2 tutorial setup.

The tutorial setup is a plain transformers `Trainer` on lines of WikiText-2, each padded (or cut)
to 64 tokens, batch 8, `DataCollatorForLanguageModeling(mlm=False)`. textgen-train packs the same
lines (EOS between them) into 64-token blocks, batch 8, so both do the same compute per step.
Throughput counts only real (non-padding) tokens. Empty lines are dropped for both (kinder to the
tutorial setup, which would otherwise spend whole rows on padding).

Model: a random GPT-2-shaped model, 4 layers, 4 heads, 256 wide, 256 positions, GPT-2's
50,257-token vocabulary (16.1M parameters), from tests/tiny_models.py. Same data, same number of
steps, same process. Three trainers: the tutorial (fp32), textgen-train in fp32 (packing alone)
and textgen-train's fast path (`--precision bf16`, what `auto` picks on a CPU with AMX or
AVX512-BF16: bf16 autocast with the head fused with its loss, trainer/fused_loss.py). Each runs
`--rounds` times, the three alternating, and the median round counts, so load from other
processes on the machine skews all alike. Wall time is the training loop as the same `StepClock`
callback sees it in every trainer: from the start of training to the end of the last step.
Loading, tokenizing, and textgen-train's final validation pass and samples are not in it (they
were before 2026-12-02, a handicap the tutorial setup, which does neither, did not carry).

    .venv/bin/python benchmarks/train_throughput.py [--data-dir DIR] [--steps 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 256, "n_positions": 256}
SEQ = 64
BATCH = 8


def step_clock() -> object:
    """A callback that times the training loop: train begin to the end of the last step."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        started = ended = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.ended = time.perf_counter()

        @property
        def seconds(self) -> float:
            return self.ended - self.started

    return StepClock()


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
    clock = step_clock()
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                      callbacks=[clock])
    trainer.train()
    wall = clock.seconds
    total = steps * BATCH * SEQ
    return {"trainer": "tutorial (pad to 64)", "steps": steps, "real_tokens": real,
            "padding_tokens": total - real, "wall_s": wall, "tokens_per_s": real / wall}


def textgen_run(model_dir: Path, lines: list[str], steps: int, work: Path, round_: int,
                precision: str) -> dict:
    """textgen-train's own pipeline on the same lines, 64-token packed blocks, batch 8."""
    from trainer.data import DataSpec
    from trainer.train import TrainOptions, run_training

    source = work / "lines.jsonl"
    source.write_text("\n".join(json.dumps({"text": line}) for line in lines) + "\n")
    options = TrainOptions(model=str(model_dir), output=work / f"textgen-{precision}-{round_}",
                           data=DataSpec(train_files=[str(source)], valid_fraction=0.001),
                           max_steps=steps, block_size=SEQ, batch_size=BATCH, eval_blocks=1,
                           save_steps=10_000, cache_dir=work / "cache", precision=precision)
    clock = step_clock()
    report = run_training(options, extra_callbacks=[clock]).report
    log = options.output / "logs" / "train.jsonl"
    losses = [record["loss"] for record in map(json.loads, log.read_text().splitlines())
              if "loss" in record]
    wall = clock.seconds
    real = steps * BATCH * SEQ
    name = "textgen-train fp32" if precision == "fp32" else f"textgen-train {precision}" + (
        " fused" if report["fused_loss"] else "")
    return {"trainer": name, "steps": steps, "real_tokens": real,
            "padding_tokens": 0, "wall_s": wall, "tokens_per_s": real / wall,
            "train_call_s": report["wall_time_s"],
            "final_train_loss": report["final_train_loss"], "losses": losses,
            "perplexity_after": report["validation"]["perplexity_after"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/work/shared/data/wikitext-2-v1"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    from tests.tiny_models import save_random_gpt2

    hf_logging.set_verbosity_error()
    # The tutorial needs steps*8 lines; packing the same lines gives more than steps*8 blocks
    # of real text, so all runs take exactly `steps` steps over the same text.
    lines = load_lines(args.data_dir, args.steps * BATCH)
    rounds: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = save_random_gpt2(work / "model", SHAPE)
        for round_ in range(args.rounds):
            for result in (tutorial_run(model_dir, lines, args.steps, work),
                           textgen_run(model_dir, lines, args.steps, work, round_, "fp32"),
                           textgen_run(model_dir, lines, args.steps, work, round_, "bf16")):
                rounds.setdefault(result["trainer"], []).append(result)
    print_table(rounds, args.steps, args.rounds, len(lines))


def median_round(results: list[dict]) -> dict:
    """The round with the median tokens/s (the lower middle one for an even count)."""
    ordered = sorted(results, key=lambda r: r["tokens_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def print_table(rounds: dict[str, list[dict]], steps: int, count: int, lines: int) -> None:
    print(f"\nGPT-2 shape {SHAPE}, seq {SEQ}, batch {BATCH}, {steps} steps, CPU, median of "
          f"{count} rounds; {lines} non-empty WikiText-2 train lines")
    tutorial = statistics.median(r["tokens_per_s"] for r in rounds["tutorial (pad to 64)"])
    print(f"{'trainer':<24} {'steps':>5} {'real tokens':>12} {'padding':>8} {'wall s':>7} "
          f"{'real tok/s':>10} {'vs tutorial':>11} {'all rounds tok/s':>20}")
    for results in rounds.values():
        r = median_round(results)
        each = " ".join(f"{x['tokens_per_s']:,.0f}" for x in results)
        ratio = statistics.median(x["tokens_per_s"] for x in results) / tutorial
        print(f"{r['trainer']:<24} {r['steps']:>5} {r['real_tokens']:>12,} "
              f"{r['padding_tokens']:>8,} {r['wall_s']:>7.1f} {r['tokens_per_s']:>10,.0f} "
              f"{ratio:>10.2f}x {each:>20}")
    shown = sorted({1, 2, 5, 10, steps // 2, steps} - {0})
    print("train loss at step " + ", ".join(str(step) for step in shown) + " (same batches, "
          "same dropout masks):")
    for results in rounds.values():
        r = median_round(results)
        if "losses" in r:
            print(f"  {r['trainer']:<24} " + "  ".join(
                f"{r['losses'][step - 1]:.4f}" for step in shown if step <= len(r["losses"])))
    for results in rounds.values():
        r = median_round(results)
        if "final_train_loss" in r:
            print(f"{r['trainer']}: final train loss {r['final_train_loss']:.4f}, validation "
                  f"perplexity after {r['perplexity_after']:,.1f}; trainer.train() with the "
                  f"final validation and samples {r['train_call_s']:.1f} s")


if __name__ == "__main__":
    main()
