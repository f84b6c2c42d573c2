"""Samples while training: at every evaluation, a few prompts generated the same way.

Each prompt is continued greedily (no sampling, so the only thing that changes between two
evaluations is the model) for a few tokens; chat runs send each prompt as a user message through
the chat template, as chat mode would. The samples of one evaluation go to three places: a
`{"step": N, "samples": [...]}` record in `logs/train.jsonl` (the F5 screen follows it),
TensorBoard text (`samples/<i>`), and `report.json` (the list `samples_by_step`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from repl.errors import TextgenError

DEFAULT_PROMPTS = ("The history of the city", "In the summer of 1998,",
                   "The most important thing to know about")
DEFAULT_CHAT_PROMPTS = ("What is the capital of France?", "Give me one tip for learning to code.")
SAMPLE_TOKENS = 32
MAX_PROMPTS = 16  # each prompt costs a generation at every evaluation


def read_prompts(path: Path | None, chat: bool = False) -> list[str]:
    """One prompt a line (blank lines skipped); without a file the built-in ones."""
    if path is None:
        return list(DEFAULT_CHAT_PROMPTS if chat else DEFAULT_PROMPTS)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TextgenError(f"--sample-prompts {path}: cannot read it ({exc}).") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise TextgenError(f"--sample-prompts {path}: no prompts (one a line).")
    if len(prompts) > MAX_PROMPTS:
        raise TextgenError(f"--sample-prompts {path}: {len(prompts)} prompts; use at most "
                           f"{MAX_PROMPTS}, each is generated at every evaluation.")
    return prompts


def generate_samples(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int,
                     chat: bool = False) -> list[dict[str, str]]:
    """Each prompt's greedy continuation (text only, special tokens dropped). The model's train
    or eval mode is left as it was."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for prompt in prompts:
            if chat:
                text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                     tokenize=False, add_generation_prompt=True)
                ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
            else:
                ids = tokenizer(prompt, return_tensors="pt").input_ids
            ids = ids.to(device)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
                else tokenizer.eos_token_id
            with torch.inference_mode():
                generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                           max_new_tokens=max_new_tokens, do_sample=False,
                                           pad_token_id=pad, temperature=None, top_p=None,
                                           top_k=None)
            new = generated[0, ids.shape[1]:].tolist()
            out.append({"prompt": prompt,
                        "text": tokenizer.decode(new, skip_special_tokens=True)})
    finally:
        model.train(was_training)
    return out


class SampleRecorder:
    """Generates the prompts at each evaluation and writes them where they are read."""

    def __init__(self, prompts: Sequence[str], tokenizer: Any, log_path: Path | None,
                 tensorboard_dir: Path | None, max_new_tokens: int = SAMPLE_TOKENS,
                 chat: bool = False, tokens_per_step: int = 0, enabled: bool = True) -> None:
        self.prompts = list(prompts)
        self.tokenizer = tokenizer
        self.log_path = log_path
        self.tensorboard_dir = tensorboard_dir
        self.max_new_tokens = max_new_tokens
        self.chat = chat
        self.tokens_per_step = tokens_per_step
        self.enabled = enabled  # False on ranks other than 0: they do nothing
        self.records: list[dict[str, Any]] = []
        self._writer: Any = None

    def record(self, model: Any, step: int) -> dict[str, Any] | None:
        if not self.enabled or not self.prompts:
            return None
        if self.records and self.records[-1]["step"] == step:
            return self.records[-1]  # evaluated twice at one step (e.g. the last step)
        samples = generate_samples(model, self.tokenizer, self.prompts, self.max_new_tokens,
                                   self.chat)
        entry = {"step": step, "samples": samples}
        self.records.append(entry)
        if self.log_path is not None:
            line = {"step": step, "tokens": step * self.tokens_per_step, "time": time.time(),
                    "samples": samples}
            with self.log_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")
        self._to_tensorboard(entry)
        return entry

    def _to_tensorboard(self, entry: dict[str, Any]) -> None:
        if self.tensorboard_dir is None:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.tensorboard_dir), filename_suffix=".samples")
        for i, sample in enumerate(entry["samples"]):
            # TensorBoard renders text as Markdown: keep the prompt apart from the continuation.
            self._writer.add_text(f"samples/{i}", f"**{sample['prompt']}** {sample['text']}",
                                  global_step=entry["step"])
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def callback(self) -> Any:
        """A TrainerCallback that records after every evaluation (before training, every
        --eval-steps, at the end)."""
        from transformers import TrainerCallback

        recorder = self

        class Samples(TrainerCallback):
            def on_evaluate(self, args, state, control, model=None, **kwargs):
                if model is not None:
                    recorder.record(model, state.global_step)

        return Samples()


def samples_from_log(log_path: Path) -> list[dict[str, Any]]:
    """The sample records of a run's train.jsonl, one per step (the last one wins), in order."""
    by_step: dict[int, dict[str, Any]] = {}
    try:
        lines = log_path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("samples"), list):
            by_step[int(record.get("step", 0))] = {"step": int(record.get("step", 0)),
                                                   "samples": record["samples"]}
    return [by_step[step] for step in sorted(by_step)]
