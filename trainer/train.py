"""Fine-tune a causal LM (or train the LSTM baseline) with the transformers `Trainer`.

`run_training(options)` runs in sections: plan (every flag checked, nothing loaded yet), model,
data, output folder, trainer, train, judge, save. It measures validation loss before (with a
progress bar), trains with a progress bar (loss, learning rate, tokens/s), JSONL and TensorBoard
logs, evaluates at every checkpoint and at the end, and saves the model, tokenizer, training
arguments, report.json and loss.png to the output folder.

Ctrl+C saves a checkpoint at the end of the current step and prints the command that resumes
it. A NaN loss, non-finite weights or a validation perplexity over 4x the start (divergence)
stop the run; the checkpoints on disk are complete and finite, and the outcome names the one to
use. Under `torchrun` / `accelerate launch` the same code runs data-parallel.
"""

from __future__ import annotations

import math
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer import checkpoints
from trainer.callbacks import (
    RunState,
    build_callbacks,
    perplexity,
    previous_records,
    truncate_log,
)
from trainer.chat_data import prepare_chat_training, uses_chat_data
from trainer.data import PackedBlocks, PreparedData, prepare_training_data
from trainer.fused_loss import supports_fused_loss
from trainer.output import (
    disk_full_error,
    is_disk_full,
    plot_loss,
    save_model,
    write_json,
)
from trainer.plan import (  # noqa: F401  (check_output, TrainOptions: the public names)
    DIVERGENCE_FACTOR,
    TrainOptions,
    TrainPlan,
    check_output,
    make_plan,
    resolve_precision,
)
from trainer.samples import SampleRecorder, read_prompts, samples_from_log


@dataclass
class TrainOutcome:
    status: str  # "done" | "interrupted" | "nan" | "diverged"
    output: Path
    report: dict[str, Any] | None = None
    message: str = ""


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    base_name: str


def run_training(options: TrainOptions, extra_callbacks: list[Any] | None = None
                 ) -> TrainOutcome:
    """Train as `options` say; raise TextgenError on bad input. Only rank 0 writes files."""
    from transformers import set_seed

    plan = make_plan(options)
    chat = uses_chat_data(options.data, options.chat_template, options.arch)
    prompts = read_prompts(options.sample_prompts, chat)
    say = print if plan.main_process else _quiet
    set_seed(options.seed)
    loaded = load_for_training(plan)
    args = training_arguments(plan)
    # Tokenize on the main process first; the others then read its datasets cache.
    with args.main_process_first(desc="tokenizing"):
        data = prepare_chat_training(options.data, loaded.tokenizer, plan.block_size,
                                     options.chat_template, loaded.model) if chat else \
            prepare_training_data(options.data, loaded.tokenizer, plan.block_size,
                                  options.cache_dir)
    valid = data.valid
    if plan.eval_blocks is not None and plan.eval_blocks < len(valid):
        valid = valid.head(plan.eval_blocks)
    state = RunState()
    prepare_output(plan, state, say)
    samples = SampleRecorder(prompts, loaded.tokenizer, plan.jsonl_log,
                             plan.logs_dir / "tensorboard", options.sample_tokens, chat,
                             plan.tokens_per_step, enabled=plan.main_process)
    callbacks = [*build_callbacks(plan, state), samples.callback(), *(extra_callbacks or [])]
    trainer = make_trainer(plan, args, loaded, data.train, valid, callbacks, state)
    announce(plan, loaded, data, valid, trainer, say)

    hint = f"resume with: {plan.resume_command()}"
    try:
        wall = train(plan, trainer, state, say)
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full_error(plan.output, hint) from exc
        raise
    try:
        stopped = judge(plan, trainer, state, hint)
        if stopped is not None:
            return stopped
        report = finish(plan, trainer, state, loaded, data, valid, wall) \
            if plan.main_process else None
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full_error(plan.output, hint) from exc
        raise
    finally:
        _leave_process_group()
    return TrainOutcome("done", plan.output, report=report)


# ---------------------------------------------------------------- model

def load_for_training(plan: TrainPlan) -> LoadedModel:
    """The model to train (the LSTM is new, with the spec's tokenizer), LoRA applied."""
    from repl.models import context_length, load_model

    options = plan.options
    loaded = load_model(options.model, device="cpu", dtype="fp32")
    if options.arch == "lstm":
        from trainer.lstm import build_lstm

        model = build_lstm(loaded.tokenizer, options.lstm_hidden, options.lstm_layers)
        base_name = f"LSTM {options.lstm_layers}x{options.lstm_hidden} ({loaded.info.name} tokens)"
    else:
        model, base_name = loaded.model, loaded.info.name
    model.train()
    plan.fit_to_model(context_length(model.config), supports_fused_loss(model))
    if plan.lora:
        model = _apply_lora(model, options)
    return LoadedModel(model, loaded.tokenizer, base_name)


def _apply_lora(model: Any, options: TrainOptions) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=options.lora_r, lora_alpha=options.lora_alpha, lora_dropout=0.05,
                        target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    trainable, total = model.get_nb_trainable_parameters()
    print(f"LoRA r={options.lora_r}: training {trainable / 1e6:.2f}M of {total / 1e6:.1f}M "
          "parameters")
    return model


# ---------------------------------------------------------------- trainer

def training_arguments(plan: TrainPlan) -> Any:
    from transformers import TrainingArguments

    options = plan.options
    return TrainingArguments(
        output_dir=str(plan.checkpoints_dir),
        per_device_train_batch_size=plan.batch_size,
        per_device_eval_batch_size=plan.batch_size,
        gradient_accumulation_steps=options.grad_accum,
        learning_rate=plan.lr,
        warmup_steps=options.warmup,
        weight_decay=options.weight_decay,
        num_train_epochs=options.epochs,
        max_steps=options.max_steps,
        logging_steps=1,
        logging_nan_inf_filter=False,  # a NaN must reach the guard, not be averaged away
        eval_strategy="steps",
        eval_steps=plan.eval_steps,
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=None,  # trainer/checkpoints.py keeps the newest and the best
        seed=options.seed,
        bf16=plan.precision == "bf16",
        fp16=plan.precision == "fp16",
        use_cpu=not plan.cuda,
        ddp_backend="gloo" if (plan.world > 1 and not plan.cuda) else None,
        **({"activation_checkpointing": True} if options.gradient_checkpointing else {}),
        # The fused kernel runs on CPU too (torch >= 2.4): one pass over the 16M-parameter
        # model's weights instead of a dozen, ~9% of an fp32 step here.
        optim="adamw_torch_fused",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_drop_last=False,
    )


def make_trainer(plan: TrainPlan, args: Any, loaded: LoadedModel, train_data: PackedBlocks,
                 valid: PackedBlocks, callbacks: list[Any], state: RunState) -> Any:
    from transformers import default_data_collator
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from trainer.hf_trainer import TextgenTrainer

    trainer = TextgenTrainer(model=loaded.model, args=args, train_dataset=train_data,
                             eval_dataset=valid, data_collator=default_data_collator,
                             processing_class=loaded.tokenizer, callbacks=callbacks,
                             run_state=state, progress=plan.main_process,
                             fused_loss=plan.fused_loss)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


# ---------------------------------------------------------------- output folder

def prepare_output(plan: TrainPlan, state: RunState, say: Any) -> None:
    """Clear an old run (only now: a run refused for bad input leaves it alone), clean up what a
    crash left, and on --resume say where it continues and cut the log back to there."""
    options = plan.options
    found = plan.checkpoints_found
    if options.resume:
        for path, why in found.skipped_newer():
            say(f"skipped {path.name}: {why}")
        if plan.resume_from is None:
            say(f"no complete checkpoint in {plan.checkpoints_dir}: starting from step 0")
    if not plan.main_process:
        return
    if plan.clear_output:
        shutil.rmtree(plan.output)
    checkpoints.remove_leftovers(plan.checkpoints_dir)
    plan.logs_dir.mkdir(parents=True, exist_ok=True)
    if plan.resume_from is not None:
        step = checkpoints.step_of(plan.resume_from)
        truncate_log(plan.jsonl_log, step)
        state.loss_before = _previous_before(plan.jsonl_log)


def _previous_before(log: Path) -> float | None:
    """The first run's step-0 validation loss, from the JSONL log a resumed run appends to."""
    for record in previous_records(log):
        if record.get("step") == 0 and "eval_loss" in record:
            return record["eval_loss"]
    return None


def announce(plan: TrainPlan, loaded: LoadedModel, data: PreparedData, valid: PackedBlocks,
             trainer: Any, say: Any) -> None:
    params = sum(p.numel() for p in trainer.model.parameters())
    say(f"model: {loaded.base_name} · {params / 1e6:.1f}M params"
        f"{' (LoRA)' if plan.lora else ''} · precision {plan.precision}"
        f"{' (head and loss fused)' if plan.fused_loss else ''} · "
        f"{'cuda' if plan.cuda else 'cpu'} x{plan.world}")
    say(f"data: {data.summary['source']} · {data.summary['train_tokens']:,} train tokens in "
        f"{data.summary['train_blocks']:,} blocks of {plan.block_size} · validation "
        f"{valid.tokens:,} tokens ({len(valid)} blocks)")
    say(f"batch {plan.batch_size} x accum {plan.options.grad_accum} x {plan.world} process(es) "
        f"= {plan.tokens_per_step:,} tokens/step · lr {plan.lr:g}")


# ---------------------------------------------------------------- train

def train(plan: TrainPlan, trainer: Any, state: RunState, say: Any) -> float:
    """Validation before (a fresh run), then training; returns its wall time in seconds."""
    from repl.errors import TextgenError

    if plan.resume_from is None:
        say("measuring validation loss before training...")
        before = trainer.evaluate()["eval_loss"]
        if not math.isfinite(before):
            raise TextgenError(f"{plan.options.model}: the validation loss is {before} before "
                               "any training: the model's weights are broken.")
        say(f"validation perplexity before: {perplexity(before):.2f}")
    else:
        say(f"resuming from {plan.resume_from.name} (step "
            f"{checkpoints.step_of(plan.resume_from)})")
    started = time.perf_counter()
    previous = signal.signal(signal.SIGINT, _stop_handler(state, say)) \
        if _is_main_thread() else None
    try:
        trainer.train(resume_from_checkpoint=str(plan.resume_from) if plan.resume_from
                      else None)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return time.perf_counter() - started


def judge(plan: TrainPlan, trainer: Any, state: RunState, hint: str) -> TrainOutcome | None:
    """An outcome when training did not finish well (NaN, divergence, Ctrl+C); else None."""
    found = checkpoints.scan_checkpoints(plan.checkpoints_dir)
    good = found.newest
    named = f"the last good checkpoint (weights checked finite) is {good}" if good else (
        f"no checkpoint was saved before it; the starting model {plan.options.model} is "
        "unchanged")
    if state.nan is not None:
        step, what = state.nan
        return TrainOutcome("nan", plan.output, message=(
            f"{what} became NaN/inf at step {step}; stopped without saving the broken weights "
            f"({named}). Try a lower --lr, --precision fp32, or --warmup."))
    if state.diverged is not None:
        step, loss = state.diverged
        best = checkpoints.best_checkpoint(found) or good
        before = perplexity(state.loss_before)
        now = f"{perplexity(loss):,.5g}" if perplexity(loss) else str(loss)
        kept = (f"the best checkpoint is {best} (validation perplexity "
                f"{_marker_perplexity(best)})" if best else
                f"no checkpoint was kept before it; the starting model {plan.options.model} is "
                "unchanged")
        return TrainOutcome("diverged", plan.output, message=(
            f"training diverged: validation perplexity {now} at step {step}, more than "
            f"{DIVERGENCE_FACTOR:g}x the {before:,.2f} before training; stopped without saving "
            f"the model ({kept}). Try a lower --lr or more --warmup."))
    if state.stop_requested:
        return TrainOutcome("interrupted", plan.output, message=(
            f"interrupted at step {trainer.state.global_step}; checkpoint saved in "
            f"{good}. To continue exactly where it stopped, {hint}"))
    return None


def _marker_perplexity(path: Path) -> str:
    value = perplexity(checkpoints.read_marker(path).get("validation_loss"))
    return f"{value:,.2f}" if value else "not measured"


# ---------------------------------------------------------------- save

def finish(plan: TrainPlan, trainer: Any, state: RunState, loaded: LoadedModel,
           data: PreparedData, valid: PackedBlocks, wall: float) -> dict[str, Any]:
    """Save the model and write the report; the checkpoints go last (unless kept)."""
    after = state.last_eval[1] if state.last_eval and \
        state.last_eval[0] == trainer.state.global_step else trainer.evaluate()["eval_loss"]
    save_trained_model(plan, trainer.model, trainer.processing_class)
    report = build_report(plan, trainer.state, state, loaded, data, valid, after, wall)
    write_json(plan.output / "training_args.json",
               {"textgen": plan.options.to_dict(), "transformers": trainer.args.to_dict()})
    tokens_per_step = plan.tokens_per_step
    extra = [] if state.loss_before is None else [(0, state.loss_before)]
    extra.append((trainer.state.global_step * tokens_per_step, after))
    plot_loss(trainer.state.log_history, tokens_per_step, plan.output / "loss.png", extra)
    write_json(plan.output / "report.json", report)
    if not plan.options.keep_checkpoints and plan.checkpoints_dir.exists():
        checkpoints.discard(plan.checkpoints_dir)
    return report


def save_trained_model(plan: TrainPlan, model: Any, tokenizer: Any) -> None:
    """The model as asked: full (or LoRA merged into it), or the LoRA adapter alone; bf16 on
    --save-dtype bf16."""
    import torch

    if plan.lora and plan.options.lora_save == "merged":
        model = model.merge_and_unload()  # a plain model, loadable without peft
    model.eval()
    if plan.options.save_dtype == "bf16":
        model = model.to(torch.bfloat16)
    save_model(model, tokenizer, plan.output)
    if plan.lora and plan.options.lora_save == "adapter":
        # What `--model models/NAME` loads the adapter onto (repl/models.py).
        spec = plan.options.model
        base = str(Path(spec).expanduser().resolve()) if Path(spec).expanduser().exists() \
            else spec
        write_json(plan.output / "textgen_adapter.json", {"base": base})


def build_report(plan: TrainPlan, trainer_state: Any, state: RunState, loaded: LoadedModel,
                 data: PreparedData, valid: PackedBlocks, after: float,
                 wall: float) -> dict[str, Any]:
    options = plan.options
    # The log history of a resumed run holds the earlier steps too (from trainer_state.json).
    train_losses = [e["loss"] for e in trainer_state.log_history if "loss" in e]
    steps_this_run = trainer_state.global_step - state.first_step
    tokens_per_step = plan.tokens_per_step
    return {
        "model": options.model,
        "base": loaded.base_name,
        "arch": options.arch,
        "lora": plan.lora,
        "lora_save": options.lora_save if plan.lora else None,
        "save_dtype": options.save_dtype,
        "data": data.summary,
        "steps": trainer_state.global_step,
        "steps_this_run": steps_this_run,
        "resumed_from": plan.resume_from.name if plan.resume_from else None,
        "epochs": round(trainer_state.epoch or 0.0, 4),
        "tokens_seen": trainer_state.global_step * tokens_per_step,
        "tokens_per_step": tokens_per_step,
        "batch_size": plan.batch_size,
        "grad_accum": options.grad_accum,
        "processes": plan.world,
        "block_size": plan.block_size,
        "learning_rate": plan.lr,
        "precision": plan.precision,
        "fused_loss": plan.fused_loss,
        "wall_time_s": round(wall, 2),
        "tokens_per_s": round(steps_this_run * tokens_per_step / wall, 1) if wall > 0 else None,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "mean_train_loss": sum(train_losses) / len(train_losses) if train_losses else None,
        "validation": {
            "tokens": valid.tokens,
            "loss_before": state.loss_before,
            "perplexity_before": perplexity(state.loss_before),
            "loss_after": after,
            "perplexity_after": perplexity(after),
        },
        # The greedy samples of every evaluation (a resumed run's earlier ones too).
        "samples_by_step": samples_from_log(plan.jsonl_log),
    }


# ---------------------------------------------------------------- helpers

def _leave_process_group() -> None:
    """Wait for rank 0 to finish writing, then close the group together: a rank that exits
    while the others still use gloo can abort in the group's destructor (seen as SIGABRT)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _stop_handler(state: RunState, say: Any) -> Any:
    def handle(signum: int, frame: Any) -> None:
        if state.stop_requested:  # a second Ctrl+C: stop now, without a checkpoint
            raise KeyboardInterrupt
        state.stop_requested = True
        say("\nCtrl+C: saving a checkpoint after this step (press Ctrl+C again to abort "
            "without saving)...", file=sys.stderr)

    return handle


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass
