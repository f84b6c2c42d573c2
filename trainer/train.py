"""Fine-tune a causal LM (or train the LSTM baseline) with the transformers `Trainer`.

`run_training(options)` prepares the packed data, measures validation loss before, trains with a
progress bar (loss, learning rate, tokens/s), JSONL and TensorBoard logs, and saves the model,
tokenizer, training arguments, report.json and loss.png to the output folder. Ctrl+C saves a
checkpoint at the end of the current step and prints the command that resumes it; NaN loss stops
the run and keeps the last good checkpoint. Under `torchrun` the same code runs data-parallel.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from repl.errors import TextgenError
from trainer.data import DataSpec, PackedBlocks, prepare_training_data
from trainer.output import (
    disk_full_error,
    is_disk_full,
    plot_loss,
    save_model,
    write_json,
)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ARCHS = ("transformer", "lstm")
# On CPU a 1024-token block at batch 8 takes minutes per step; these keep a step to seconds.
CPU_BLOCK_SIZE = 128
CPU_BATCH_SIZE = 4
CPU_EVAL_BLOCKS = 32
GPU_BLOCK_SIZE = 1024
GPU_BATCH_SIZE = 8
# Files that mark a folder as one of ours (a model or a run in progress) for --overwrite.
OUTPUT_MARKERS = ("report.json", "checkpoints", "logs", "config.json")


@dataclass
class TrainOptions:
    model: str
    output: Path
    data: DataSpec = field(default_factory=DataSpec)
    arch: str = "transformer"
    epochs: float = 1.0
    max_steps: int = -1
    lr: float | None = None
    batch_size: int | None = None
    grad_accum: int = 1
    warmup: float = 0.0
    weight_decay: float = 0.0
    block_size: int | None = None
    precision: str = "auto"
    eval_steps: int | None = None
    eval_blocks: int | None = None
    save_steps: int = 500
    seed: int = 42
    gradient_checkpointing: bool = False
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lstm_hidden: int = 512
    lstm_layers: int = 2
    resume: bool = False
    overwrite: bool = False
    keep_checkpoints: bool = False
    cache_dir: Path | None = None
    command: list[str] = field(default_factory=list)  # argv, to print the resume command

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["output"] = str(self.output)
        data["data"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in data["data"].items()}
        data.pop("command")
        return data


@dataclass
class TrainOutcome:
    status: str  # "done" | "interrupted" | "nan"
    output: Path
    report: dict[str, Any] | None = None
    message: str = ""


# ---------------------------------------------------------------- callbacks

class _Runtime:
    """State the callbacks share: whether Ctrl+C asked to stop, and why training ended."""

    def __init__(self) -> None:
        self.stop_requested = False
        self.nan_step: int | None = None
        self.train_started: float | None = None
        self.first_step: int = 0


def make_callbacks(runtime: _Runtime, tokens_per_step: int, log_path: Path,
                   main_process: bool) -> list[Any]:
    import tqdm
    from transformers import TrainerCallback

    class ProgressBar(TrainerCallback):
        """One bar for the whole run: step, loss, learning rate, tokens/s."""

        bar: Any = None
        last: dict[str, float] = {}  # noqa: RUF012

        def on_train_begin(self, args, state, control, **kwargs):
            runtime.train_started = time.perf_counter()
            runtime.first_step = state.global_step
            if main_process:
                self.bar = tqdm.tqdm(total=state.max_steps, initial=state.global_step,
                                     desc="training", unit="step", dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is None:
                return
            self.bar.update(state.global_step - self.bar.n)
            elapsed = time.perf_counter() - (runtime.train_started or time.perf_counter())
            done = state.global_step - runtime.first_step
            post = {k: f"{v:.3g}" for k, v in self.last.items()}
            if elapsed > 0:
                post["tok/s"] = f"{done * tokens_per_step / elapsed:,.0f}"
            self.bar.set_postfix(post, refresh=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                self.last = {"loss": logs["loss"], "lr": logs.get("learning_rate", 0.0)}
                if self.bar is not None:
                    self.on_step_end(args, state, control)
            if "eval_loss" in logs and self.bar is not None:
                self.bar.write(f"step {state.global_step}: validation loss "
                               f"{logs['eval_loss']:.4f}, perplexity "
                               f"{_ppl(logs['eval_loss']):.2f}")

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    class JsonlLog(TrainerCallback):
        """Every log record, one JSON object a line, with the tokens seen so far."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not main_process or not logs:
                return
            record = {"step": state.global_step, "tokens": state.global_step * tokens_per_step,
                      "time": time.time(), **logs}
            with log_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    class Guard(TrainerCallback):
        """Stops on NaN/inf loss (without saving the bad weights) and on Ctrl+C (saving)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                runtime.nan_step = state.global_step
                control.should_training_stop = True
                control.should_save = False
                control.should_evaluate = False

        def on_step_end(self, args, state, control, **kwargs):
            if runtime.stop_requested:
                control.should_save = True
                control.should_training_stop = True
            elif state.global_step >= state.max_steps:
                # The finished model is saved separately; a full checkpoint of it is waste.
                control.should_save = False

    return [ProgressBar(), JsonlLog(), Guard()]


def _ppl(loss: float | None) -> float | None:
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(min(loss, 50.0))


# ---------------------------------------------------------------- the run

def resolve_precision(precision: str, cuda: bool, bf16_ok: bool) -> str:
    """auto: bf16 on GPUs that have it, else fp16 on GPU, fp32 on CPU."""
    if precision not in PRECISIONS:
        raise TextgenError(f"--precision {precision}: use one of {', '.join(PRECISIONS)}.")
    if precision == "auto":
        return ("bf16" if bf16_ok else "fp16") if cuda else "fp32"
    if precision == "fp16" and not cuda:
        raise TextgenError("--precision fp16 needs a GPU; on CPU use fp32 or bf16.")
    return precision


def check_output(options: TrainOptions) -> bool:
    """The output folder must be new, or --overwrite, or --resume with a checkpoint in it.
    Returns whether it must be cleared first (done only once the new run's input checks out)."""
    output = options.output
    if options.resume and options.overwrite:
        raise TextgenError("--resume continues a run and --overwrite discards it: pick one.")
    if options.resume:
        if not any((output / "checkpoints").glob("checkpoint-*")):
            raise TextgenError(f"nothing to resume in {output}: it has no checkpoints/.")
        return False
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return False
    if _only_our_logs(output):
        return True  # a run that failed before its first checkpoint: nothing to keep
    if not options.overwrite:
        raise TextgenError(f"{output} already exists; pass --overwrite to replace it, or "
                           "--resume to continue its last checkpoint.")
    if not output.is_dir() or not any((output / name).exists() for name in OUTPUT_MARKERS):
        raise TextgenError(f"{output} is not a folder textgen-train wrote; --overwrite only "
                           "replaces those. Pick another --output.")
    return True


def _only_our_logs(output: Path) -> bool:
    """Whether `output` holds nothing but the logs a run writes before its first checkpoint."""
    if not output.is_dir() or {p.name for p in output.iterdir()} != {"logs"}:
        return False
    logs = output / "logs"
    return logs.is_dir() and {p.name for p in logs.iterdir()} <= {"train.jsonl", "tensorboard"}


def resume_command(options: TrainOptions) -> str:
    argv = list(options.command) or ["textgen-train", "train", "..."]
    argv = [a for a in argv if a != "--overwrite"]
    if "--resume" not in argv:
        argv.append("--resume")
    return shlex.join(argv)


def run_training(options: TrainOptions, extra_callbacks: list[Any] | None = None
                 ) -> TrainOutcome:
    """Train as `options` say; raise TextgenError on bad input. Only rank 0 writes files."""
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator, set_seed
    from transformers.integrations import TensorBoardCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from repl.models import context_length, load_model

    if options.arch not in ARCHS:
        raise TextgenError(f"--arch {options.arch}: use transformer or lstm.")
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    main_process = rank == 0
    output = options.output
    clear_output = check_output(options) if main_process else False
    cuda = torch.cuda.is_available()
    precision = resolve_precision(options.precision, cuda,
                                  cuda and torch.cuda.is_bf16_supported())
    if options.lora and options.arch == "lstm":
        raise TextgenError("--lora adapts a pretrained transformer; the LSTM trains from scratch.")
    if options.gradient_checkpointing and options.arch == "lstm":
        raise TextgenError("--gradient-checkpointing is for transformers, not the LSTM.")

    set_seed(options.seed)
    loaded = load_model(options.model, device="cpu", dtype="fp32")
    tokenizer = loaded.tokenizer
    if options.arch == "lstm":
        from trainer.lstm import DEFAULT_LSTM_LR, build_lstm

        model = build_lstm(tokenizer, options.lstm_hidden, options.lstm_layers)
        default_lr = DEFAULT_LSTM_LR
        base_name = f"LSTM {options.lstm_layers}x{options.lstm_hidden} ({loaded.info.name} tokens)"
    else:
        model = loaded.model
        default_lr = 5e-5
        base_name = loaded.info.name
    del loaded
    model.train()
    context = context_length(model.config)
    block_size = options.block_size if options.block_size is not None else min(
        context or GPU_BLOCK_SIZE, GPU_BLOCK_SIZE if cuda else CPU_BLOCK_SIZE)
    if block_size < 2:
        raise TextgenError(f"--block-size {block_size}: use at least 2 tokens.")
    if context is not None and block_size > context:
        raise TextgenError(f"--block-size {block_size} is larger than the model's context of "
                           f"{context} tokens; use at most {context}.")
    batch_size = options.batch_size if options.batch_size is not None else (
        GPU_BATCH_SIZE if cuda else CPU_BATCH_SIZE)
    lr = options.lr if options.lr is not None else default_lr
    eval_blocks = options.eval_blocks if options.eval_blocks is not None else (
        None if cuda else CPU_EVAL_BLOCKS)
    for name, value in (("--batch-size", batch_size), ("--grad-accum", options.grad_accum),
                        ("--save-steps", options.save_steps)):
        if value < 1:
            raise TextgenError(f"{name} {value}: use a positive whole number.")
    if not (lr > 0 and math.isfinite(lr)):
        raise TextgenError(f"--lr {lr}: use a positive number such as 5e-5.")

    if options.lora:
        model = _apply_lora(model, options)

    checkpoints = output / "checkpoints"
    logs_dir = output / "logs"
    args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=options.grad_accum,
        learning_rate=lr,
        warmup_steps=options.warmup,
        weight_decay=options.weight_decay,
        num_train_epochs=options.epochs,
        max_steps=options.max_steps,
        logging_steps=1,
        logging_nan_inf_filter=False,  # a NaN must reach the guard, not be averaged away
        eval_strategy="steps" if options.eval_steps else "no",
        eval_steps=options.eval_steps,
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=2,
        seed=options.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not cuda,
        ddp_backend="gloo" if (world > 1 and not cuda) else None,
        **({"activation_checkpointing": True} if options.gradient_checkpointing else {}),
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_drop_last=False,
    )
    # Tokenize on the main process first; the others then read its datasets cache.
    with args.main_process_first(desc="tokenizing"):
        data = prepare_training_data(options.data, tokenizer, block_size, options.cache_dir)
    valid = data.valid
    if eval_blocks is not None and eval_blocks < len(valid):
        valid = PackedBlocks(valid.blocks[:eval_blocks])
    tokens_per_step = batch_size * options.grad_accum * block_size * world
    if main_process:
        if clear_output:  # only now: a run refused for bad input leaves the old model alone
            shutil.rmtree(output)
        logs_dir.mkdir(parents=True, exist_ok=True)

    runtime = _Runtime()
    callbacks = make_callbacks(runtime, tokens_per_step, logs_dir / "train.jsonl", main_process)
    if main_process:
        from torch.utils.tensorboard import SummaryWriter

        callbacks.append(TensorBoardCallback(SummaryWriter(str(logs_dir / "tensorboard"))))
    trainer = Trainer(model=model, args=args, train_dataset=data.train, eval_dataset=valid,
                      data_collator=default_data_collator, processing_class=tokenizer,
                      callbacks=callbacks + list(extra_callbacks or []))
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)

    say = print if main_process else (lambda *a, **k: None)
    say(f"model: {base_name} · {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params"
        f"{' (LoRA)' if options.lora else ''} · precision {precision} · "
        f"{'cuda' if cuda else 'cpu'} x{world}")
    say(f"data: {data.summary['source']} · {data.summary['train_tokens']:,} train tokens in "
        f"{data.summary['train_blocks']:,} blocks of {block_size} · validation "
        f"{valid.tokens:,} tokens ({len(valid)} blocks)")
    say(f"batch {batch_size} x accum {options.grad_accum} x {world} process(es) = "
        f"{tokens_per_step:,} tokens/step · lr {lr:g}")
    hint = f"resume with: {resume_command(options)}"
    try:
        before = None
        if not options.resume:
            say("measuring validation loss before training...")
            before = trainer.evaluate()["eval_loss"]
            if not math.isfinite(before):
                raise TextgenError(f"{options.model}: the validation loss is {before} before "
                                   "any training: the model's weights are broken.")
            say(f"validation perplexity before: {_ppl(before):.2f}")
        started = time.perf_counter()
        previous = signal.signal(signal.SIGINT, _stop_handler(runtime, say)) \
            if _is_main_thread() else None
        try:
            result = trainer.train(resume_from_checkpoint=True if options.resume else None)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        wall = time.perf_counter() - started
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full_error(output, hint) from exc
        raise

    last_checkpoint = _last_checkpoint(checkpoints)
    if runtime.nan_step is not None:
        where = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint
                 else "no checkpoint was saved before it")
        return TrainOutcome("nan", output, message=(
            f"the training loss became NaN/inf at step {runtime.nan_step}; stopped without "
            f"saving the broken weights ({where}). Try a lower --lr, --precision fp32, or "
            "--warmup."))
    if runtime.stop_requested:
        return TrainOutcome("interrupted", output, message=(
            f"interrupted at step {trainer.state.global_step}; checkpoint saved in "
            f"{last_checkpoint}. To continue exactly where it stopped, {hint}"))

    after = trainer.evaluate()["eval_loss"]
    report = None
    try:
        if main_process:
            report = _finish(trainer, options, output, data.summary, valid, before, after, wall,
                             result, tokens_per_step, precision, base_name, block_size,
                             batch_size, lr, world, runtime.first_step)
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full_error(output, hint) from exc
        raise
    finally:
        _leave_process_group()
    return TrainOutcome("done", output, report=report)


def _leave_process_group() -> None:
    """Wait for rank 0 to finish writing, then close the group together: a rank that exits
    while the others still use gloo can abort in the group's destructor (seen as SIGABRT)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _finish(trainer: Any, options: TrainOptions, output: Path, data_summary: dict[str, Any],
            valid: PackedBlocks, before: float | None, after: float, wall: float, result: Any,
            tokens_per_step: int, precision: str, base_name: str, block_size: int,
            batch_size: int, lr: float, world: int, first_step: int) -> dict[str, Any]:
    model = trainer.model
    if options.lora:
        model = model.merge_and_unload()  # a plain model, loadable without peft
    model.eval()
    save_model(model, trainer.processing_class, output)
    state = trainer.state
    train_losses = [e["loss"] for e in state.log_history if "loss" in e]
    steps_this_run = state.global_step - first_step  # a resumed run times only its own steps
    if before is None:  # resumed: the report of the first part has the before value
        before = _previous_before(output)
    report = {
        "model": options.model,
        "base": base_name,
        "arch": options.arch,
        "lora": options.lora,
        "data": data_summary,
        "steps": state.global_step,
        "steps_this_run": steps_this_run,
        "epochs": round(state.epoch or 0.0, 4),
        "tokens_seen": state.global_step * tokens_per_step,
        "tokens_per_step": tokens_per_step,
        "batch_size": batch_size,
        "grad_accum": options.grad_accum,
        "processes": world,
        "block_size": block_size,
        "learning_rate": lr,
        "precision": precision,
        "wall_time_s": round(wall, 2),
        "tokens_per_s": round(steps_this_run * tokens_per_step / wall, 1) if wall > 0 else None,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "mean_train_loss": getattr(result, "training_loss", None),
        "validation": {
            "tokens": valid.tokens,
            "loss_before": before,
            "perplexity_before": _ppl(before),
            "loss_after": after,
            "perplexity_after": _ppl(after),
        },
    }
    write_json(output / "training_args.json",
               {"textgen": options.to_dict(), "transformers": trainer.args.to_dict()})
    write_json(output / "report.json", report)
    extra = [(0, before)] if before is not None and math.isfinite(before) else []
    extra.append((state.global_step * tokens_per_step, after))
    plot_loss(state.log_history, tokens_per_step, output / "loss.png", extra)
    if not options.keep_checkpoints:
        shutil.rmtree(output / "checkpoints", ignore_errors=True)
    return report


def _previous_before(output: Path) -> float | None:
    """The first run's step-0 validation loss, from the JSONL log a resumed run appends to."""
    log = output / "logs" / "train.jsonl"
    for line in log.read_text().splitlines() if log.is_file() else []:
        record = json.loads(line)
        if record.get("step") == 0 and "eval_loss" in record:
            return record["eval_loss"]
    return None


def _apply_lora(model: Any, options: TrainOptions) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=options.lora_r, lora_alpha=options.lora_alpha, lora_dropout=0.05,
                        target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    trainable, total = model.get_nb_trainable_parameters()
    print(f"LoRA r={options.lora_r}: training {trainable / 1e6:.2f}M of {total / 1e6:.1f}M "
          "parameters")
    return model


def _last_checkpoint(checkpoints: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not checkpoints.is_dir():
        return None
    found = get_last_checkpoint(str(checkpoints))
    return Path(found) if found else None


def _stop_handler(runtime: _Runtime, say: Any) -> Any:
    def handle(signum: int, frame: Any) -> None:
        if runtime.stop_requested:  # a second Ctrl+C: stop now, without a checkpoint
            raise KeyboardInterrupt
        runtime.stop_requested = True
        say("\nCtrl+C: saving a checkpoint after this step (press Ctrl+C again to abort "
            "without saving)...", file=sys.stderr)

    return handle


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
