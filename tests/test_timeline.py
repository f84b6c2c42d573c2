"""The checkpoint timeline on a run folder of tiny models: stages found in order with the
perplexity of their own step, the same seed everywhere, table / Markdown / JSON output."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from repl.errors import TextgenError
from tests.tiny_models import save_random_gpt2
from trainer.timeline import find_stages, run_timeline, to_markdown


def make_run(tmp_path: Path, base: Path, chat: bool = False) -> Path:
    """What a finished run with --keep-checkpoints leaves: checkpoints at steps 2 and 4 (each a
    different random model, so their text differs), the final model (step 6), report, log."""
    run = tmp_path / "run"
    for step, seed in ((2, 1), (4, 2)):
        folder = save_random_gpt2(run / "checkpoints" / f"checkpoint-{step}", seed=seed)
        (folder / "trainer_state.json").write_text(json.dumps(
            {"global_step": step, "log_history": [{"step": step, "eval_loss": 5.0 - step / 2}]}))
    save_random_gpt2(run, seed=3)
    (run / "checkpoints" / "checkpoint-5").mkdir()  # broken (no weights): skipped
    (run / "logs").mkdir()
    (run / "logs" / "train.jsonl").write_text(
        json.dumps({"step": 0, "eval_loss": 6.0}) + "\n"
        + json.dumps({"step": 2, "loss": 5.5}) + "\n")
    report = {"model": str(base), "steps": 6,
              "data": {"format": "chat (loss on assistant tokens only)"} if chat else {},
              "validation": {"loss_before": 6.0, "loss_after": 3.5}}
    (run / "report.json").write_text(json.dumps(report))
    return run


def test_stages_in_order_with_their_own_perplexity(tiny_model_dir, tmp_path):
    run = make_run(tmp_path, tiny_model_dir)
    stages = find_stages(run)
    assert [(s.label, s.step) for s in stages] == [
        ("base", 0), ("checkpoint-2", 2), ("checkpoint-4", 4), ("final", 6)]
    assert stages[0].spec == str(tiny_model_dir)
    expected = [math.exp(6.0), math.exp(4.0), math.exp(3.0), math.exp(3.5)]
    assert [s.perplexity for s in stages] == pytest.approx(expected)


def test_a_checkpoint_at_the_final_step_is_the_final_model(tiny_model_dir, tmp_path):
    run = make_run(tmp_path, tiny_model_dir)
    shutil.copytree(run / "checkpoints" / "checkpoint-4", run / "checkpoints" / "checkpoint-6")
    assert [s.label for s in find_stages(run)][-2:] == ["checkpoint-4", "final"]


def test_refusals_say_what_to_do(tiny_model_dir, tmp_path):
    with pytest.raises(TextgenError, match="no such folder"):
        find_stages(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextgenError, match="--base SPEC"):
        find_stages(tmp_path / "empty")
    with pytest.raises(TextgenError, match="--keep-checkpoints"):
        find_stages(tmp_path / "empty", base=str(tiny_model_dir))


def test_same_prompt_and_seed_at_every_stage(tiny_model_dir, tmp_path):
    run = make_run(tmp_path, tiny_model_dir)
    result = run_timeline(run, "The lighthouse", seed=3, max_new_tokens=8)
    texts = [s["text"] for s in result["stages"]]
    assert len(texts) == 4 and all(texts)
    assert len(set(texts)) > 1  # different weights, different text
    again = run_timeline(run, "The lighthouse", seed=3, max_new_tokens=8)
    assert [s["text"] for s in again["stages"]] == texts  # the seed makes it reproducible
    assert result["chat"] is False and result["params"]["seed"] == 3
    markdown = to_markdown(result)
    assert markdown.count("\n| ") == 5 and "| final | 6 | 33.12 |" in markdown


def test_chat_runs_need_a_template(tiny_model_dir, tmp_path):
    run = make_run(tmp_path, tiny_model_dir, chat=True)
    with pytest.raises(TextgenError, match="chat template"):
        run_timeline(run, "Hi", max_new_tokens=4)  # tiny GPT-2 has none: one clear line


def test_cli_prints_table_markdown_and_json(tiny_model_dir, tmp_path, capsys):
    from trainer.cli import main

    run = make_run(tmp_path, tiny_model_dir)
    assert main(["timeline", str(run), "--prompt", "A ship", "--max-new-tokens", "4",
                 "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [s["label"] for s in record["stages"]] == ["base", "checkpoint-2", "checkpoint-4",
                                                      "final"]
    assert main(["timeline", str(run), "--prompt", "A ship", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr()
    assert "checkpoint-4" in out.out and "generating with final" in out.err
    assert main(["timeline", str(run), "--prompt", "x", "--max-new-tokens", "0"]) == 2
    assert "textgen-train: error: --max-new-tokens 0" in capsys.readouterr().err


def test_timeline_of_a_real_run_with_kept_checkpoints(tiny_model_dir, tmp_path, capsys):
    from trainer.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The lighthouse keeper counted the ships that passed the harbour. " * 60)
    output = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model_dir), "--train-files", str(corpus),
                 "--output", str(output), "--block-size", "32", "--batch-size", "2",
                 "--max-steps", "4", "--save-steps", "2", "--keep-checkpoints", "--lr", "1e-3",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    capsys.readouterr()
    assert main(["timeline", str(output), "--prompt", "The lighthouse", "--max-new-tokens",
                 "4", "--format", "json"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    assert [(s["label"], s["step"]) for s in stages] == [("base", 0), ("checkpoint-2", 2),
                                                         ("final", 4)]
    assert all(s["perplexity"] for s in stages)
    assert stages[0]["perplexity"] > stages[-1]["perplexity"]
