"""What a run leaves in `models/NAME/`: atomic writes, the saved model, report.json, loss.png."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from repl.errors import TextgenError
from repl.session import file_mode, write_atomically


def write_json(path: Path, data: Any) -> None:
    write_atomically(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


def save_model(model: Any, tokenizer: Any, output: Path) -> None:
    """save_pretrained into a staging folder inside `output`, then move each file into place, so
    an interrupted save never leaves a half-written model that looks complete."""
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=output))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for item in staging.iterdir():
            target = output / item.name
            if item.is_file():
                os.chmod(item, file_mode(target))
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def plot_loss(log_history: list[dict[str, Any]], tokens_per_step: int, path: Path,
              extra_eval: list[tuple[int, float]] = ()) -> None:
    """Train and validation loss against tokens seen, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"] * tokens_per_step, e["loss"]) for e in log_history if "loss" in e]
    valid = sorted({(e["step"] * tokens_per_step, e["eval_loss"])
                    for e in log_history if "eval_loss" in e} | set(extra_eval))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
    if valid:
        ax.plot(*zip(*valid, strict=True), "o-", label="validation loss")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=".loss.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.chmod(tmp, file_mode(path))
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC, also when torch.save wraps it in a RuntimeError."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(seen, RuntimeError) and ("No space left" in str(seen)
                                               or "file write failed" in str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def disk_full_error(output: Path, resume_hint: str) -> TextgenError:
    free = shutil.disk_usage(output if output.exists() else output.parent).free
    return TextgenError(
        f"the disk is full while writing to {output} ({free / 1e6:.0f} MB free). Finished "
        f"checkpoints are kept; free some space and {resume_hint}"
    )
