"""The checkpoint timeline: one prompt and seed through every stage of a run.

Stages: step 0 (the base model the run started from, named in report.json or
training_args.json), every kept checkpoint under `checkpoints/` (oldest first) and the final
model in the run's folder. Each one generates the same prompt with the same seed and sampling
parameters, so the differences are the training's. Each stage carries the validation perplexity
measured at its step: from the report (before / after), the checkpoint's own state files or the
run's train.jsonl; a stage whose step had no evaluation shows none rather than a neighbour's.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from repl.errors import TextgenError

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
           "adapter_model.safetensors")
FORMATS = ("table", "md", "json")


@dataclass
class Stage:
    label: str  # "base", "checkpoint-N", "final"
    step: int
    spec: str  # what load_model gets (a folder, or the base model's spec)
    perplexity: float | None = None
    text: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _ppl(loss: Any) -> float | None:
    if not isinstance(loss, int | float) or not math.isfinite(loss):
        return None
    return math.exp(min(float(loss), 50.0))


def _has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for name in WEIGHTS)


def is_adapter(folder: Path) -> bool:
    """A LoRA adapter folder (weights of the adapter only; the base comes from its config)."""
    return (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


def eval_losses(run: Path) -> dict[int, float]:
    """Validation loss by step, from the run's log and every checkpoint's own state."""
    losses: dict[int, float] = {}
    log = run / "logs" / "train.jsonl"
    for line in log.read_text(encoding="utf-8").splitlines() if log.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("eval_loss"), int | float):
            losses[int(record.get("step", 0))] = record["eval_loss"]
    for folder in (run / "checkpoints").glob("checkpoint-*"):
        state = _read_json(folder / "trainer_state.json")
        for entry in state.get("log_history", []):
            if isinstance(entry, dict) and isinstance(entry.get("eval_loss"), int | float):
                losses.setdefault(int(entry.get("step", 0)), entry["eval_loss"])
    return losses


def base_spec(run: Path) -> str | None:
    """The model spec the run started from."""
    report = _read_json(run / "report.json")
    if isinstance(report.get("model"), str):
        return report["model"]
    args = _read_json(run / "training_args.json").get("textgen", {})
    if isinstance(args, dict) and isinstance(args.get("model"), str):
        return args["model"]
    return None


def find_stages(run: Path, base: str | None = None) -> list[Stage]:
    """Base, kept checkpoints, final model: what the timeline generates with."""
    if not run.is_dir():
        raise TextgenError(f"{run}: no such folder (expected a run folder such as models/NAME).")
    base = base or base_spec(run)
    if base is None:
        raise TextgenError(f"{run}: no report.json or training_args.json names the base model; "
                           "pass --base SPEC.")
    report = _read_json(run / "report.json")
    validation = report.get("validation") or {}
    losses = eval_losses(run)
    before = validation.get("loss_before", losses.get(0))
    stages = [Stage("base", 0, base, _ppl(before))]
    checkpoints = sorted(((int(m.group(1)), p) for p in (run / "checkpoints").glob("*")
                          if (m := _CHECKPOINT.match(p.name)) and p.is_dir()
                          and _has_weights(p)), key=lambda pair: pair[0])
    for step, folder in checkpoints:
        marker = _read_json(folder / "textgen_checkpoint.json")
        loss = losses.get(step, marker.get("validation_loss"))
        stages.append(Stage(folder.name, step, str(folder), _ppl(loss)))
    if _has_weights(run) and ((run / "config.json").is_file() or is_adapter(run)):
        step = int(report.get("steps") or (checkpoints[-1][0] if checkpoints else 0))
        if stages[-1].step == step and stages[-1].label != "base":
            stages.pop()  # the last checkpoint is the final model's own weights
        after = validation.get("loss_after", losses.get(step))
        stages.append(Stage("final", step, str(run), _ppl(after)))
    if len(stages) == 1:
        raise TextgenError(f"{run}: no checkpoints and no final model yet; train with "
                           "--keep-checkpoints (and --save-steps N) to keep some.")
    return stages


def load_stage(stage: Stage, base: str, device: str | None) -> Any:
    """The stage's model for generation; an adapter folder is merged into its base."""
    from dataclasses import replace

    from repl.models import load_model

    folder = Path(stage.spec)
    if stage.label == "base" or not is_adapter(folder):
        return _plain(load_model(stage.spec, device=device))
    from peft import PeftModel

    loaded = _plain(load_model(base, device=device))
    merged = PeftModel.from_pretrained(loaded.model, str(folder)).merge_and_unload()
    return replace(loaded, model=merged.eval())


def _plain(loaded: Any) -> Any:
    """One short generation per model: not worth a compiled fast path where one exists."""
    from dataclasses import fields, replace

    return replace(loaded, fast=False) if "fast" in {f.name for f in fields(loaded)} else loaded


def run_timeline(run: Path, prompt: str, seed: int = 0, max_new_tokens: int = 40,
                 chat: bool | None = None, base: str | None = None,
                 device: str | None = None, progress: Any = None) -> dict[str, Any]:
    """Generate `prompt` at every stage. `chat` None: chat when the run trained on chat data."""
    import gc
    import time

    from repl.engine import GenerationRequest, Generator
    from repl.params import SamplingParams

    stages = find_stages(run, base)
    base_model = stages[0].spec
    report = _read_json(run / "report.json")
    if chat is None:
        chat = str((report.get("data") or {}).get("format", "")).startswith("chat")
    try:
        params = SamplingParams(max_new_tokens=max_new_tokens, seed=seed)
    except ValueError as exc:
        raise TextgenError(str(exc)) from None
    request = (GenerationRequest.chat([{"role": "user", "content": prompt}], params) if chat
               else GenerationRequest(prompt=prompt, params=params))
    for stage in stages:
        if progress is not None:
            progress(stage)
        loaded = load_stage(stage, base_model, device)
        started = time.perf_counter()
        stage.text, _ = Generator(loaded).generate(request)
        stage.seconds = round(time.perf_counter() - started, 2)
        del loaded
        gc.collect()
    return {"run": str(run), "prompt": prompt, "seed": seed, "chat": chat,
            "params": asdict(params), "stages": [s.to_dict() for s in stages]}


# ---------------------------------------------------------------- output

def _ppl_text(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def to_markdown(result: dict[str, Any]) -> str:
    lines = [f"Prompt: {result['prompt']!r} · seed {result['seed']} · "
             f"{'chat' if result['chat'] else 'completion'}", "",
             "| stage | step | validation ppl | text |", "|---|---:|---:|---|"]
    for stage in result["stages"]:
        text = stage["text"].replace("|", "\\|").replace("\n", "<br>")
        lines.append(f"| {stage['label']} | {stage['step']} | {_ppl_text(stage['perplexity'])} "
                     f"| {text} |")
    return "\n".join(lines) + "\n"


def print_table(result: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    table = Table(title=Text(f"{result['run']}: {result['prompt']!r} · seed {result['seed']}"),
                  show_lines=True, expand=True)
    table.add_column("stage", no_wrap=True)
    table.add_column("step", justify="right")
    table.add_column("val ppl", justify="right")
    table.add_column("text", ratio=1)
    for stage in result["stages"]:
        table.add_row(stage["label"], str(stage["step"]), _ppl_text(stage["perplexity"]),
                      Text(stage["text"].strip() or "(nothing)"))  # Text: no markup
    console.print(table)
