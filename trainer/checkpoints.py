"""Checkpoints that survive a crash.

A checkpoint is written into `checkpoints/.partial-N/checkpoint-N`, every file fsynced, then
renamed to `checkpoints/checkpoint-N` in one step, with our marker (`textgen_checkpoint.json`:
step, validation loss, weights finite) written last inside it. So a `kill -9` at any moment
leaves the previous checkpoints untouched and at worst a `.partial-*` folder, removed on the next
start. Older checkpoints are dropped by renaming them to `.deleting-*` first, so a crash while
deleting never leaves a half-deleted `checkpoint-N` either. `--resume` takes the newest complete
one and names what it skipped.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER = "textgen_checkpoint.json"
TRAINER_STATE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")
# Checkpoints kept besides the best one (by validation loss).
KEEP_NEWEST = 2


@dataclass
class CheckpointScan:
    """The complete checkpoints of a folder (oldest first) and the broken ones, with why."""

    complete: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def newest(self) -> Path | None:
        return self.complete[-1] if self.complete else None

    def skipped_newer(self) -> list[tuple[Path, str]]:
        """The broken checkpoints newer than the one a resume takes (the ones worth naming)."""
        newest = step_of(self.newest) if self.newest else -1
        return [(p, why) for p, why in self.skipped if step_of(p) > newest]


def step_of(path: Path) -> int:
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else -1


def problem(path: Path) -> str | None:
    """Why `path` is not a complete checkpoint, or None when it is."""
    if not path.is_dir():
        return "not a folder"
    for name in (TRAINER_STATE, MARKER):
        if not (path / name).is_file():
            return f"incomplete (missing {name})"
    try:
        marker = json.loads((path / MARKER).read_text())
        json.loads((path / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return "unreadable state files"
    if not marker.get("finite", False):
        return "its weights are not finite"
    return None


def scan_checkpoints(folder: Path) -> CheckpointScan:
    scan = CheckpointScan()
    if not folder.is_dir():
        return scan
    for path in sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=step_of):
        why = problem(path)
        if why is None:
            scan.complete.append(path)
        else:
            scan.skipped.append((path, why))
    return scan


def read_marker(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def best_checkpoint(scan: CheckpointScan) -> Path | None:
    """The complete checkpoint with the lowest validation loss (None when none has one)."""
    scored = [(read_marker(p).get("validation_loss"), p) for p in scan.complete]
    scored = [(loss, p) for loss, p in scored
              if isinstance(loss, (int, float)) and math.isfinite(loss)]
    return min(scored, key=lambda item: item[0])[1] if scored else None


def remove_leftovers(folder: Path) -> list[str]:
    """Remove the `.partial-*` and `.deleting-*` folders a crash left; names what it removed."""
    removed = []
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.startswith((".partial-", ".deleting-")):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    return removed


def staging_dir(folder: Path, step: int) -> Path:
    """Where checkpoint `step` is written before it is published (the Trainer's run dir)."""
    return folder / f".partial-{step}"


def publish(staging: Path, folder: Path, step: int, marker: dict[str, Any]) -> Path:
    """Finish a checkpoint written under `staging`: marker, fsync everything, rename into place."""
    from trainer.output import write_json

    written = staging / f"checkpoint-{step}"
    write_json(written / MARKER, {"step": step, **marker})
    fsync_tree(written)
    target = folder / written.name
    if target.exists():  # the same step saved again (a resumed run): the new one wins
        discard(target)
    os.replace(written, target)
    fsync_dir(folder)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def discard(path: Path) -> None:
    """Delete a checkpoint so a crash midway leaves no half-deleted `checkpoint-N`."""
    doomed = path.with_name(f".deleting-{path.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def rotate(folder: Path, keep: int = KEEP_NEWEST) -> None:
    """Keep the newest `keep` complete checkpoints and the best one; drop the rest."""
    scan = scan_checkpoints(folder)
    best = best_checkpoint(scan)
    for path in scan.complete[:-keep]:
        if path != best:
            discard(path)


def fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(directory))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
