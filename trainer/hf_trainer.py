"""The transformers `Trainer`, with two parts of our own.

- `_save_checkpoint` writes into a staging folder and publishes the checkpoint with one rename
  (trainer/checkpoints.py), and only when every weight is finite: a checkpoint on disk is one a
  run can continue from.
- `evaluate` is the exact token-weighted validation loss: every rank scores its own blocks
  (none twice), the sums of per-token losses and the token counts are added over ranks, then
  divided once. Under `torchrun` it equals the single-process number on the same blocks. On
  CPU it runs in fp32 whatever the training precision, so it is the number `textgen-train eval`
  gives for the saved (fp32) weights, and fp32 and bf16 runs compare on the same scale.
- `compute_loss` fuses the head with its loss for bf16 on CPU (trainer/fused_loss.py).
"""

from __future__ import annotations

import contextlib
import math
import shutil
from pathlib import Path
from typing import Any

from transformers import Trainer

from trainer import checkpoints
from trainer.callbacks import RunState


class TextgenTrainer(Trainer):
    def __init__(self, *args: Any, run_state: RunState, progress: bool,
                 fused_loss: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_state = run_state
        self.progress = progress
        self.fused_loss = fused_loss
        self._staging: str | None = None

    # ------------------------------------------------------------ loss

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """bf16 on CPU: the head fused with its loss (trainer/fused_loss.py), the same value
        transformers computes, normalised the same way (by `num_items_in_batch`)."""
        if not (self.fused_loss and model.training and not return_outputs
                and "labels" in inputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        from trainer.fused_loss import causal_lm_loss

        return causal_lm_loss(self.accelerator.unwrap_model(model), inputs, num_items_in_batch)

    # ------------------------------------------------------------ checkpoints

    def _get_output_dir(self, trial: Any) -> str:
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        step = self.state.global_step
        if not weights_finite(self.model):
            self.run_state.nan = (step, "the weights")
            self.control.should_training_stop = True
            return
        folder = Path(self.args.output_dir)
        staging = checkpoints.staging_dir(folder, step)
        if self.args.should_save:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)  # a save that died halfway
        _barrier()
        self._staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)  # every rank writes its part (rng state)
        finally:
            self._staging = None
        _barrier()
        if self.args.should_save:
            last = self.run_state.last_eval
            checkpoints.publish(staging, folder, step, {
                "finite": True,
                "validation_loss": last[1] if last and last[0] == step else None,
            })
            checkpoints.rotate(folder)
        _barrier()

    # ------------------------------------------------------------ validation

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        loss = self.validation_loss(dataset)
        metrics = {f"{metric_key_prefix}_loss": loss}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control,
                                                         metrics)
        return metrics

    def validation_loss(self, dataset: Any) -> float:
        """Mean negative log-likelihood per predicted token over all of `dataset`'s blocks."""
        import torch
        import torch.distributed as dist
        import tqdm

        rank, world = self.args.process_index, self.args.world_size
        mine = range(rank, len(dataset), world)
        batch = self.args.per_device_eval_batch_size
        model = self.model
        was_training = model.training
        model.eval()
        device = self.args.device
        totals = torch.zeros(2, dtype=torch.float64, device=device)  # nll sum, tokens
        bar = tqdm.tqdm(total=len(dataset), desc="validation", unit="block", leave=True,
                        disable=not (self.progress and self.is_world_process_zero()),
                        dynamic_ncols=True)
        try:
            autocast = self.accelerator.autocast() if device.type != "cpu" else \
                contextlib.nullcontext()
            with torch.no_grad(), autocast:
                for start in range(0, len(mine), batch):
                    ids = torch.stack([dataset[i]["input_ids"]
                                       for i in mine[start:start + batch]]).to(device)
                    logits = model(input_ids=ids).logits[:, :-1].float()
                    targets = ids[:, 1:]
                    totals[0] += torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                        reduction="sum").double()
                    totals[1] += targets.numel()
                    bar.update(len(ids) * world)
        finally:
            bar.close()
            model.train(was_training)
        if world > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        nll, tokens = totals.tolist()
        return nll / tokens if tokens else math.nan


def weights_finite(model: Any) -> bool:
    import torch

    with torch.no_grad():
        return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
