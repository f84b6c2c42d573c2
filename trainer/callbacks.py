"""What watches a run: the progress bar, the JSONL log, and the guard that stops it.

`RunState` is what the callbacks and the trainer share: whether Ctrl+C asked to stop, the
validation loss before training, and why training ended (NaN loss, non-finite weights,
divergence). `build_callbacks` is the one place the run's callbacks are listed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.plan import DIVERGENCE_FACTOR, TrainPlan


@dataclass
class RunState:
    stop_requested: bool = False
    # (step, what): the training loss, the validation loss or the weights became NaN/inf
    nan: tuple[int, str] | None = None
    diverged: tuple[int, float] | None = None  # (step, validation loss) far above the start
    loss_before: float | None = None  # validation loss before training (step 0)
    last_eval: tuple[int, float] | None = None  # (step, validation loss) of the latest eval
    train_started: float | None = None
    first_step: int = 0

    @property
    def failed(self) -> bool:
        return self.nan is not None or self.diverged is not None


def perplexity(loss: float | None) -> float | None:
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(min(loss, 50.0))


def diverged(loss: float, before: float | None) -> bool:
    """Whether the validation perplexity is over DIVERGENCE_FACTOR x the one before training."""
    return before is not None and loss > before + math.log(DIVERGENCE_FACTOR)


def build_callbacks(plan: TrainPlan, state: RunState) -> list[Any]:
    """Every callback of a run, in order; TensorBoard only where files are written."""
    callbacks = [ProgressBar(plan, state), JsonlLog(plan), Guard(state)]
    if plan.main_process:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(SummaryWriter(str(plan.logs_dir / "tensorboard"))))
    return callbacks


def _callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


class ProgressBar(_callback_base()):
    """One bar for the whole run: step, loss, learning rate, tokens/s."""

    def __init__(self, plan: TrainPlan, state: RunState) -> None:
        self.plan, self.run = plan, state
        self.bar: Any = None
        self.last: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        import tqdm

        self.run.train_started = time.perf_counter()
        self.run.first_step = state.global_step
        if self.plan.main_process:
            self.bar = tqdm.tqdm(total=state.max_steps, initial=state.global_step,
                                 desc="training", unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is None:
            return
        self.bar.update(state.global_step - self.bar.n)
        elapsed = time.perf_counter() - (self.run.train_started or time.perf_counter())
        done = state.global_step - self.run.first_step
        post = {k: f"{v:.3g}" for k, v in self.last.items()}
        if elapsed > 0:
            post["tok/s"] = f"{done * self.plan.tokens_per_step / elapsed:,.0f}"
        self.bar.set_postfix(post, refresh=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.last = {"loss": logs["loss"], "lr": logs.get("learning_rate", 0.0)}
            if self.bar is not None:
                self.on_step_end(args, state, control)
        if "eval_loss" in logs and self.bar is not None:
            ppl = perplexity(logs["eval_loss"])
            self.bar.write(f"step {state.global_step}: validation loss {logs['eval_loss']:.4f}, "
                           f"perplexity {ppl:.2f}" if ppl else
                           f"step {state.global_step}: validation loss {logs['eval_loss']}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


class JsonlLog(_callback_base()):
    """Every log record, one JSON object a line, with the tokens seen so far."""

    def __init__(self, plan: TrainPlan) -> None:
        self.plan = plan

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.plan.main_process or not logs:
            return
        record = {"step": state.global_step,
                  "tokens": state.global_step * self.plan.tokens_per_step,
                  "time": time.time(), **logs}
        with self.plan.jsonl_log.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


class Guard(_callback_base()):
    """Stops on NaN/inf loss and on divergence (saving nothing more), and on Ctrl+C (saving);
    evaluates at the last step, inside training, so every log (TensorBoard too) gets it."""

    def __init__(self, state: RunState) -> None:
        self.run = state

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.run.nan = (state.global_step, "the training loss")
            self._stop_without_saving(control)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return
        self.run.last_eval = (state.global_step, loss)
        if not math.isfinite(loss):
            self.run.nan = (state.global_step, "the validation loss")
            self._stop_without_saving(control)
        elif state.global_step == 0 and self.run.loss_before is None:
            self.run.loss_before = loss
        elif diverged(loss, self.run.loss_before):
            self.run.diverged = (state.global_step, loss)
            self._stop_without_saving(control)

    def on_step_end(self, args, state, control, **kwargs):
        if self.run.stop_requested:
            control.should_save = True
            control.should_training_stop = True
        elif state.global_step >= state.max_steps:
            # The finished model is saved separately; a full checkpoint of it is waste.
            control.should_save = False
            control.should_evaluate = True

    def _stop_without_saving(self, control: Any) -> None:
        control.should_training_stop = True
        control.should_save = False
        control.should_evaluate = False


def previous_records(log: Path) -> list[dict[str, Any]]:
    """The JSONL log's records (a line cut short by a crash is skipped)."""
    records = []
    for line in log.read_text(encoding="utf-8").splitlines() if log.is_file() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def truncate_log(log: Path, step: int) -> None:
    """Keep only the records up to `step`: a resumed run logs the steps after it again."""
    from repl.session import write_atomically

    if not log.is_file():
        return
    kept = [r for r in previous_records(log) if r.get("step", 0) <= step]
    write_atomically(log, "".join(json.dumps(r) + "\n" for r in kept).encode())
