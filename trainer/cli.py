"""`textgen-train` (and `python -m trainer`): the `train` and `eval` commands.

Heavy imports happen inside the commands, so `--help` is instant. Errors a user can fix are one
line on stderr (exit 2), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from repl.errors import TextgenError
from trainer.views_cli import add_chat_and_sample_arguments, add_view_commands

EXAMPLES = """examples:
  textgen-train train --model default --data-dir data/wikitext-2-v1 --max-steps 50 \\
      --output models/demo
  textgen-train train --model default --train-files notes/ --epochs 2 --output models/notes
  textgen-train train --arch lstm --model default --data-dir data/wikitext-2-v1 \\
      --max-steps 300 --output models/lstm
  textgen-train eval --model models/demo --data-dir data/wikitext-2-v1 --max-tokens 20000
"""

DISTRIBUTED = """several processes (data-parallel; gloo on CPU, NCCL on GPUs), under a launcher:
  torchrun --nproc_per_node 2 -m trainer train --model default --max-steps 50 --output models/ddp
  accelerate launch --num_processes 2 -m trainer train --model default --output models/ddp
  (the batch is per process: tokens/step = batch x grad-accum x block x processes)
"""


def add_data_arguments(parser: argparse.ArgumentParser, training: bool) -> None:
    group = parser.add_argument_group("data (default: WikiText-2 through `datasets`)")
    group.add_argument("--data-dir", type=Path, metavar="DIR",
                       help="a WikiText-2 folder: wiki.{train,valid,test}.raw "
                            "(wikitext-2-raw-v1) or wiki.*.tokens (wikitext-2-v1)")
    if training:
        group.add_argument("--train-files", nargs="+", metavar="PATH", default=[],
                           help="your own text: .txt/.md files (one document each), .jsonl "
                                "(one document per row) or folders of them")
        group.add_argument("--valid-files", nargs="+", metavar="PATH", default=[],
                           help="validation text for --train-files (default: the last "
                                "--valid-fraction of the training blocks)")
        group.add_argument("--valid-fraction", type=float, default=0.05, metavar="F")
        group.add_argument("--subset", type=float, default=1.0, metavar="FRAC",
                           help="train on the first FRAC of the training documents")
    else:
        group.add_argument("--files", nargs="+", metavar="PATH", default=[],
                           help="score your own text files instead of WikiText-2")
    group.add_argument("--text-field", default="text", metavar="NAME",
                       help="the field of .jsonl rows that holds the text (default: text)")
    group.add_argument("--cache-dir", type=Path, metavar="DIR",
                       help="where tokenized text is cached (default: the datasets cache)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textgen-train",
        description="Fine-tune causal language models (or train an LSTM baseline) and measure "
                    "their perplexity.",
        epilog=EXAMPLES + "\n" + DISTRIBUTED,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    train = sub.add_parser(
        "train", help="fine-tune a model and save it to models/NAME",
        description="Fine-tune a causal LM on packed text with the transformers Trainer; saves "
                    "model, tokenizer, training_args.json, report.json and loss.png. CPU "
                    "defaults: block 128, batch 4, 32 validation blocks; GPU: block up to 1024, "
                    "batch 8, all validation blocks.",
        epilog=DISTRIBUTED, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--model", default="default", metavar="SPEC",
                       help="model to start from: default, models/NAME, a .gguf or a hub id "
                            "(for --arch lstm: whose tokenizer to use)")
    train.add_argument("--output", required=True, type=Path, metavar="DIR",
                       help="where the trained model goes, e.g. models/NAME")
    train.add_argument("--arch", choices=("transformer", "lstm"), default="transformer",
                       help="lstm: train the LSTM baseline from scratch on the same tokens")
    add_data_arguments(train, training=True)
    add_chat_and_sample_arguments(train)
    opt = train.add_argument_group("training")
    opt.add_argument("--epochs", type=float, default=1.0)
    opt.add_argument("--max-steps", type=int, default=-1, metavar="N",
                     help="stop after N optimizer steps (overrides --epochs)")
    opt.add_argument("--lr", type=float, metavar="LR",
                     help="peak learning rate (default 5e-5; 2e-3 for --arch lstm)")
    opt.add_argument("--batch-size", type=int, metavar="N", help="blocks per device per step")
    opt.add_argument("--grad-accum", type=int, default=1, metavar="N")
    opt.add_argument("--warmup", type=float, default=0.0, metavar="W",
                     help="warm-up steps (or a fraction of all steps when < 1)")
    opt.add_argument("--weight-decay", type=float, default=0.0)
    opt.add_argument("--block-size", type=int, metavar="N",
                     help="tokens per training block (default: context up to 1024; 128 on CPU)")
    opt.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                     help="auto: bf16 on GPUs that have it, else fp16 on GPU; on CPU bf16 "
                          "where it is native (AMX or AVX512-BF16: about 2x fp32, the head "
                          "and its loss fused), else fp32. Weights, optimizer state and "
                          "validation stay fp32; bf16 on other CPUs is emulated and slower")
    opt.add_argument("--eval-steps", type=int, metavar="N",
                     help="measure validation loss every N steps (default: at every "
                          "checkpoint, and before and after training)")
    opt.add_argument("--eval-blocks", type=int, metavar="N",
                     help="validation blocks to use (default: all on GPU, 32 on CPU)")
    opt.add_argument("--save-steps", type=int, default=500, metavar="N",
                     help="checkpoint every N steps (Ctrl+C also saves one)")
    opt.add_argument("--seed", type=int, default=42)
    opt.add_argument("--gradient-checkpointing", action="store_true",
                     help="recompute activations to save memory")
    opt.add_argument("--lora", action="store_true",
                     help="train LoRA adapters (peft) instead of every weight")
    opt.add_argument("--qlora", action="store_true",
                     help="LoRA on 4-bit base weights (bitsandbytes): CUDA GPUs only")
    opt.add_argument("--lora-r", type=int, default=8)
    opt.add_argument("--lora-alpha", type=int, default=16)
    opt.add_argument("--lora-save", choices=("merged", "adapter"), default="merged",
                     help="merged: a plain model with the adapters folded in (default); "
                          "adapter: the adapter alone (a few MB; load it as --model DIR)")
    opt.add_argument("--lstm-hidden", type=int, default=512, metavar="N")
    opt.add_argument("--lstm-layers", type=int, default=2, metavar="N")
    out = train.add_argument_group("output")
    out.add_argument("--resume", action="store_true",
                     help="continue from the last checkpoint in --output (same schedule)")
    out.add_argument("--overwrite", action="store_true",
                     help="replace an existing --output folder")
    out.add_argument("--keep-checkpoints", action="store_true",
                     help="keep checkpoints/ after a finished run (default: removed)")
    out.add_argument("--save-dtype", choices=("fp32", "bf16"), default="fp32",
                     help="dtype of the saved weights (bf16: half the size)")
    train.set_defaults(func=run_train)

    ev = sub.add_parser(
        "eval", help="sliding-window perplexity and sample quality of a model",
        description="Perplexity on a split with a sliding window (the output states tokens "
                    "scored, window and stride), plus distinct-1/2 and repetition rate of a few "
                    "sampled continuations.")
    ev.add_argument("--model", default="default", metavar="SPEC")
    add_data_arguments(ev, training=False)
    ev.add_argument("--split", choices=("train", "valid", "test"), default="valid")
    ev.add_argument("--layout", choices=("articles", "hf-guide"), default="articles",
                    help="articles: documents joined with EOS, blank lines dropped (as "
                         "training sees them); hf-guide: rows joined with blank lines and "
                         "the Hugging Face perplexity guide's loop, to compare with published "
                         "figures (default window: the context up to 1024, stride 512)")
    ev.add_argument("--window", type=int, metavar="W",
                    help="tokens per window (default: the context up to 512)")
    ev.add_argument("--stride", type=int, metavar="S", help="default: half the window")
    ev.add_argument("--max-tokens", type=int, metavar="N",
                    help="score only the first N tokens of the split (a quick subset)")
    ev.add_argument("--samples", type=int, default=4, metavar="N",
                    help="sampled continuations for distinct-n/repetition (0: none)")
    ev.add_argument("--device", help="cpu, cuda, ... (default: CUDA when present)")
    ev.add_argument("--json", action="store_true", help="print one JSON record")
    ev.set_defaults(func=run_eval)
    add_view_commands(sub)
    return parser


def run_train(args: argparse.Namespace, argv: list[str]) -> int:
    from transformers.utils import logging as hf_logging

    from trainer.data import DataSpec
    from trainer.train import TrainOptions, run_training

    hf_logging.set_verbosity_error()  # config-alignment notes are noise next to the progress bar

    if args.data_dir and args.train_files:
        raise TextgenError("use --data-dir or --train-files, not both.")
    data = DataSpec(data_dir=args.data_dir, train_files=args.train_files,
                    valid_files=args.valid_files, text_field=args.text_field, subset=args.subset,
                    valid_fraction=args.valid_fraction)
    options = TrainOptions(
        model=args.model, output=args.output, data=data, arch=args.arch, epochs=args.epochs,
        max_steps=args.max_steps, lr=args.lr, batch_size=args.batch_size,
        grad_accum=args.grad_accum, warmup=args.warmup, weight_decay=args.weight_decay,
        block_size=args.block_size, precision=args.precision, eval_steps=args.eval_steps,
        eval_blocks=args.eval_blocks, save_steps=args.save_steps, seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing, lora=args.lora, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, lora_save=args.lora_save, qlora=args.qlora,
        save_dtype=args.save_dtype, lstm_hidden=args.lstm_hidden, lstm_layers=args.lstm_layers,
        resume=args.resume, overwrite=args.overwrite, keep_checkpoints=args.keep_checkpoints,
        cache_dir=args.cache_dir, chat_template=args.chat_template,
        sample_prompts=args.sample_prompts, sample_tokens=args.sample_tokens,
        command=["textgen-train", *argv])
    outcome = run_training(options)
    if outcome.status == "interrupted":
        print(f"textgen-train: {outcome.message}", file=sys.stderr)
        return 130
    if outcome.status in ("nan", "diverged"):
        print(f"textgen-train: error: {outcome.message}", file=sys.stderr)
        return 1
    report = outcome.report
    if report is not None:
        v = report["validation"]
        before = f"{v['perplexity_before']:.2f}" if v["perplexity_before"] else "-"
        after = f"{v['perplexity_after']:.2f}" if v["perplexity_after"] else "-"
        print(f"done: {report['steps']} steps, {report['tokens_seen']:,} tokens in "
              f"{report['wall_time_s']:.0f} s ({report['tokens_per_s']:,.0f} tokens/s); final "
              f"train loss {report['final_train_loss']:.4f}; validation perplexity {before} -> "
              f"{after} on {v['tokens']:,} tokens")
        chat = str(report["data"].get("format", "")).startswith("chat")
        print(f"saved {outcome.output} (report.json, loss.png, logs/); try it: " + (
            f"textgen --chat --model {outcome.output}" if chat else
            f"textgen generate \"The history of\" --model {outcome.output}"))
    return 0


def run_eval(args: argparse.Namespace, argv: list[str]) -> int:
    from repl.models import load_model
    from trainer.data import DataSpec, split_rows, user_documents, wikitext_articles
    from trainer.evaluate import evaluate

    if args.data_dir and args.files:
        raise TextgenError("use --data-dir or --files, not both.")
    rows = None
    if args.files:
        documents = user_documents(args.files, args.text_field)
        data_name = ", ".join(args.files)
    else:
        spec = DataSpec(data_dir=args.data_dir)
        rows = split_rows(spec, args.split)
        documents = wikitext_articles(rows)
        data_name = spec.describe()
    loaded = load_model(args.model, device=args.device)
    report = evaluate(args.model, documents, data_name, args.split, window=args.window,
                      stride=args.stride, max_tokens=args.max_tokens, samples=args.samples,
                      cache_dir=args.cache_dir, progress=not args.json, loaded=loaded,
                      layout=args.layout, rows=rows)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.text())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, argv)
    except TextgenError as exc:
        print(f"textgen-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ntextgen-train: interrupted; nothing was saved from this step on.",
              file=sys.stderr)
        return 130
