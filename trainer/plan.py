"""Options as the user gave them (`TrainOptions`), and the plan a run follows (`TrainPlan`).

Every flag is checked once, here, before any model is loaded: a bad value is one clear
`TextgenError` line. `make_plan` then resolves what depends on the machine (device, precision,
batch size, learning rate, which checkpoint to resume) into one object the run reads from; what
depends on the model (the block size, bounded by its context) is settled by `fit_to_model`.
New features add their fields to `TrainOptions` (what the user said) and `TrainPlan` (what it
resolved to).
"""

from __future__ import annotations

import math
import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from repl.engine.cpu_features import native_bf16
from repl.errors import TextgenError
from trainer.checkpoints import CheckpointScan, scan_checkpoints
from trainer.data import DataSpec

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ARCHS = ("transformer", "lstm")
LORA_SAVES = ("merged", "adapter")
SAVE_DTYPES = ("fp32", "bf16")
# On CPU a 1024-token block at batch 8 takes minutes per step; these keep a step to seconds.
CPU_BLOCK_SIZE = 128
CPU_BATCH_SIZE = 4
CPU_EVAL_BLOCKS = 32
GPU_BLOCK_SIZE = 1024
GPU_BATCH_SIZE = 8
TRANSFORMER_LR = 5e-5
# Validation perplexity this many times the one before training means the run diverged.
DIVERGENCE_FACTOR = 4.0
# Files that mark a folder as one of ours (a model or a run in progress) for --overwrite.
OUTPUT_MARKERS = ("report.json", "checkpoints", "logs", "config.json", "adapter_config.json")


@dataclass
class TrainOptions:
    """What the command line (or a caller) asked for; nothing resolved yet."""

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
    lora_save: str = "merged"
    qlora: bool = False
    save_dtype: str = "fp32"
    lstm_hidden: int = 512
    lstm_layers: int = 2
    resume: bool = False
    overwrite: bool = False
    keep_checkpoints: bool = False
    cache_dir: Path | None = None
    chat_template: Path | None = None  # a Jinja file for chat data (default: the model's)
    sample_prompts: Path | None = None  # one prompt a line, generated at every evaluation
    sample_tokens: int = 32
    command: list[str] = field(default_factory=list)  # argv, to print the resume command

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["output"] = str(self.output)
        data["cache_dir"] = str(self.cache_dir) if self.cache_dir else None
        data["data"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in data["data"].items()}
        data.pop("command")
        return data


def validate_options(options: TrainOptions) -> None:
    """Refuse any bad flag, before anything is loaded. One message per run: the first problem."""
    def positive_int(flag: str, value: int | None) -> None:
        if value is not None and value < 1:
            raise TextgenError(f"{flag} {value}: use a positive whole number.")

    def number(flag: str, value: float | None, low: float, *, low_open: bool = False,
               high: float = math.inf, high_open: bool = True, hint: str = "") -> None:
        if value is None:
            return
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
        if not ok:
            raise TextgenError(f"{flag} {value}: {hint}.")

    if options.arch not in ARCHS:
        raise TextgenError(f"--arch {options.arch}: use one of {', '.join(ARCHS)}.")
    if options.precision not in PRECISIONS:
        raise TextgenError(f"--precision {options.precision}: use one of "
                           f"{', '.join(PRECISIONS)}.")
    if options.resume and options.overwrite:
        raise TextgenError("--resume continues a run and --overwrite discards it: pick one.")
    if options.max_steps == 0 or options.max_steps < -1:
        raise TextgenError(f"--max-steps {options.max_steps}: use a positive number of steps "
                           "(or leave it out to train for --epochs).")
    if options.max_steps == -1:
        number("--epochs", options.epochs, 0, low_open=True, hint="use a positive number "
               "of passes over the training text, such as 1 or 0.5")
    number("--lr", options.lr, 0, low_open=True, hint="use a positive number such as 5e-5")
    number("--warmup", options.warmup, 0, hint="use a number of steps (or a fraction of all "
           "steps below 1), 0 or more")
    number("--weight-decay", options.weight_decay, 0, hint="use 0 or a positive number such "
           "as 0.01")
    number("--valid-fraction", options.data.valid_fraction, 0, low_open=True, high=1,
           hint="use a fraction between 0 and 1, such as 0.05")
    number("--subset", options.data.subset, 0, low_open=True, high=1, high_open=False,
           hint="use a fraction in (0, 1]")
    for flag, value in (("--batch-size", options.batch_size),
                        ("--grad-accum", options.grad_accum),
                        ("--eval-steps", options.eval_steps),
                        ("--eval-blocks", options.eval_blocks),
                        ("--save-steps", options.save_steps),
                        ("--lora-r", options.lora_r), ("--lora-alpha", options.lora_alpha),
                        ("--lstm-hidden", options.lstm_hidden),
                        ("--lstm-layers", options.lstm_layers),
                        ("--sample-tokens", options.sample_tokens)):
        positive_int(flag, value)
    if options.block_size is not None and options.block_size < 2:
        raise TextgenError(f"--block-size {options.block_size}: use at least 2 tokens.")
    if not 0 <= options.seed < 2**32:
        raise TextgenError(f"--seed {options.seed}: use a whole number from 0 to {2**32 - 1}.")
    if options.lora_save not in LORA_SAVES:
        raise TextgenError(f"--lora-save {options.lora_save}: use one of "
                           f"{', '.join(LORA_SAVES)}.")
    if options.save_dtype not in SAVE_DTYPES:
        raise TextgenError(f"--save-dtype {options.save_dtype}: use one of "
                           f"{', '.join(SAVE_DTYPES)}.")
    lora = options.lora or options.qlora
    if options.lora_save != "merged" and not lora:
        raise TextgenError("--lora-save is for LoRA runs: add --lora (or --qlora).")
    if lora and options.arch == "lstm":
        raise TextgenError("--lora adapts a pretrained transformer; the LSTM trains from scratch.")
    if options.gradient_checkpointing and options.arch == "lstm":
        raise TextgenError("--gradient-checkpointing is for transformers, not the LSTM.")


@dataclass
class TrainPlan:
    """Everything a run needs to know, resolved once. Read-only after `fit_to_model`."""

    options: TrainOptions
    rank: int
    world: int
    cuda: bool
    precision: str
    batch_size: int
    lr: float
    eval_blocks: int | None
    eval_steps: int
    clear_output: bool  # an old run to remove once the new one's input checks out
    checkpoints_found: CheckpointScan
    block_size: int = 0  # set by fit_to_model
    # bf16 on CPU with a plain linear head: the head and its loss run fused
    # (trainer/fused_loss.py); set by fit_to_model.
    fused_loss: bool = False

    @property
    def main_process(self) -> bool:
        return self.rank == 0

    @property
    def output(self) -> Path:
        return self.options.output

    @property
    def checkpoints_dir(self) -> Path:
        return self.options.output / "checkpoints"

    @property
    def logs_dir(self) -> Path:
        return self.options.output / "logs"

    @property
    def jsonl_log(self) -> Path:
        return self.logs_dir / "train.jsonl"

    @property
    def lora(self) -> bool:
        return self.options.lora or self.options.qlora

    @property
    def resume_from(self) -> Path | None:
        return self.checkpoints_found.newest if self.options.resume else None

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.options.grad_accum * self.block_size * self.world

    def fit_to_model(self, context: int | None, plain_head: bool = False) -> None:
        """Settle the block size (the flag, or the context up to the device's default) and
        whether the head's loss runs fused (bf16 on CPU, a plain head, no LoRA, one process:
        under DDP the loss must go through the wrapped model's forward)."""
        self.fused_loss = (plain_head and self.precision == "bf16" and not self.cuda
                           and not self.lora and self.world == 1)
        wanted = self.options.block_size
        if wanted is None:
            wanted = min(context or GPU_BLOCK_SIZE, GPU_BLOCK_SIZE if self.cuda else CPU_BLOCK_SIZE)
        if context is not None and wanted > context:
            raise TextgenError(f"--block-size {wanted} is larger than the model's context of "
                               f"{context} tokens; use at most {context}.")
        self.block_size = wanted

    def resume_command(self) -> str:
        argv = list(self.options.command) or ["textgen-train", "train", "..."]
        argv = [a for a in argv if a != "--overwrite"]
        if "--resume" not in argv:
            argv.append("--resume")
        return shlex.join(argv)


def resolve_precision(precision: str, cuda: bool, bf16_ok: bool) -> str:
    """auto: bf16 on GPUs that have it, else fp16 on GPU; on CPU bf16 where the CPU does bf16
    natively (`bf16_ok`: AMX or AVX512-BF16, repl/engine/cpu_features.py), else fp32."""
    if precision not in PRECISIONS:
        raise TextgenError(f"--precision {precision}: use one of {', '.join(PRECISIONS)}.")
    if precision == "auto":
        if cuda:
            return "bf16" if bf16_ok else "fp16"
        return "bf16" if bf16_ok else "fp32"
    if precision == "fp16" and not cuda:
        raise TextgenError("--precision fp16 needs a GPU; on CPU use fp32 or bf16.")
    return precision


def make_plan(options: TrainOptions) -> TrainPlan:
    """Validate `options` and resolve them for this machine and this output folder."""
    validate_options(options)
    import torch

    cuda = torch.cuda.is_available()
    if options.qlora and not cuda:
        raise TextgenError("--qlora (4-bit base weights through bitsandbytes) runs on a CUDA "
                           "GPU only; on CPU use --lora.")
    precision = resolve_precision(options.precision, cuda,
                                  torch.cuda.is_bf16_supported() if cuda else native_bf16())
    rank = int(os.environ.get("RANK", "0"))
    found = scan_checkpoints(options.output / "checkpoints")
    clear = check_output(options, found) if rank == 0 else False
    if options.lr is not None:
        lr = options.lr
    elif options.arch == "lstm":
        from trainer.lstm import DEFAULT_LSTM_LR

        lr = DEFAULT_LSTM_LR
    else:
        lr = TRANSFORMER_LR
    return TrainPlan(
        options=options, rank=rank, world=int(os.environ.get("WORLD_SIZE", "1")), cuda=cuda,
        precision=precision,
        batch_size=options.batch_size or (GPU_BATCH_SIZE if cuda else CPU_BATCH_SIZE),
        lr=lr,
        eval_blocks=options.eval_blocks if options.eval_blocks is not None else (
            None if cuda else CPU_EVAL_BLOCKS),
        # Each checkpoint carries its validation loss, so the best one is known.
        eval_steps=options.eval_steps or options.save_steps,
        clear_output=clear, checkpoints_found=found)


def check_output(options: TrainOptions, found: CheckpointScan | None = None) -> bool:
    """The output folder must be new, or --overwrite, or --resume with a run in it. Returns
    whether it must be cleared first (done only once the new run's input checks out)."""
    output = options.output
    if options.resume and options.overwrite:
        raise TextgenError("--resume continues a run and --overwrite discards it: pick one.")
    if options.resume:
        found = found or scan_checkpoints(output / "checkpoints")
        if found.newest is not None:
            return False
        if (output / "report.json").is_file():
            raise TextgenError(f"{output} holds a finished run (report.json) and no checkpoint "
                               "to resume; train into a new --output, or pass --overwrite.")
        if not (output / "logs").is_dir() and not found.skipped:
            raise TextgenError(f"nothing to resume in {output}: it has no checkpoints/.")
        return True  # a run that died before its first complete checkpoint: start over
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
