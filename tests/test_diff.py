"""What fine-tuning changed, on a tiny GPT-2 and a copy trained a few steps on one sentence:
the sliding window scores like one long window, the trained sentence gains, the other text does
not gain as much, and the HTML and JSON carry the same numbers."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from repl.errors import TextgenError
from repl.models import default_model_dir, load_model
from tests.tiny_models import save_random_gpt2
from trainer.diff import band, diff_models, document_tokens, token_logprobs, write_html

TAUGHT = "The lighthouse keeper counted the ships that passed the harbour at night."
OTHER = "Quarterly revenue rose by four percent, driven by strong software sales."


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(base, tuned) LoadedModels: tuned is base after 30 Adam steps on TAUGHT."""
    import torch

    folder = save_random_gpt2(tmp_path_factory.mktemp("diff") / "base")
    base = load_model(str(folder), device="cpu", dtype="fp32")
    tuned = load_model(str(folder), device="cpu", dtype="fp32")
    model = tuned.model
    model.train()
    ids = torch.tensor([tuned.tokenizer(TAUGHT).input_ids])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(30):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    model.eval()
    return base, replace(tuned, model=model)


def test_sliding_window_scores_each_token_once_like_a_long_window(models):
    base, _ = models
    ids = base.tokenizer((TAUGHT + " ") * 6).input_ids
    whole = token_logprobs(base.model, ids, window=len(ids))
    windowed = token_logprobs(base.model, ids, window=16)
    assert whole.shape == windowed.shape == (len(ids) - 1,)
    assert np.allclose(whole[:15], windowed[:15], atol=1e-5)  # the first window is the same
    assert np.all(windowed < 0) and not np.allclose(whole, windowed)  # less context later


def test_spans_cover_the_text():
    from tests.tiny_models import gpt2_tokenizer

    text = "Café au lait — naïve\n\n  résumé."
    ids, spans = document_tokens(gpt2_tokenizer(), text)
    assert len(ids) == len(spans) and "".join(text[a:b] for a, b in spans) == text


def test_the_trained_text_gains_and_the_report_says_so(models, tmp_path):
    base, tuned = models
    result = diff_models(base, tuned, [("taught", TAUGHT), ("other", OTHER)],
                         base_name="base", tuned_name="tuned")
    taught, other = result.documents
    assert len(taught.token_ids) == len(base.tokenizer(TAUGHT).input_ids)  # every token scored
    before, after = taught.perplexities()
    assert after < before / 5  # it learned the sentence
    assert taught.delta.mean() > other.delta.mean()
    gained, lost = result.token_table(top=5, min_count=1)
    taught_tokens = {base.tokenizer.decode([t]) for t in taught.token_ids}
    assert gained and all(r["total_delta"] > 0 for r in gained)
    assert any(r["token"].replace("␣", " ") in taught_tokens for r in gained)
    assert all(r["total_delta"] < 0 for r in lost)
    record = result.to_dict()
    assert "".join(piece for piece, _ in record["documents"][0]["pieces"]) == TAUGHT
    assert record["tuned_perplexity"] == pytest.approx(result.overall()[1], rel=1e-4)
    page = tmp_path / "diff.html"
    write_html(result, page)
    html = page.read_text()
    assert html.count("<span style='background:rgba(") >= len(taught.token_ids)
    assert "Tokens that gained most" in html and "&lt;" not in TAUGHT


def test_budget_and_refusals(models):
    base, tuned = models
    result = diff_models(base, tuned, [("a", TAUGHT), ("b", OTHER)], max_tokens=5)
    assert result.tokens == 5 and len(result.documents) == 1
    with pytest.raises(TextgenError, match="empty"):
        diff_models(base, tuned, [("blank", "")])


def test_bands_follow_the_sign():
    assert band(2.0) == "bold green" and band(0.5) == "green" and band(0.0) == ""
    assert band(-0.5) == "red" and band(-5.0) == "bold red"


def test_cli_colours_tables_html_and_json(models, tmp_path, capsys):
    from trainer.cli import main

    base, tuned = models
    tuned_dir = tmp_path / "tuned"
    tuned.model.save_pretrained(tuned_dir)
    tuned.tokenizer.save_pretrained(tuned_dir)
    text = tmp_path / "texts"
    text.mkdir()
    (text / "taught.txt").write_text(TAUGHT)
    (text / "other.md").write_text(OTHER)
    page = tmp_path / "out" / "report.html"
    assert main(["diff", base.info.spec, str(tuned_dir), "--files", str(text),
                 "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "taught.txt" in out and "tokens that gained most" in out and page.is_file()
    assert main(["diff", base.info.spec, str(tuned_dir), "--files", str(text / "taught.txt"),
                 "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["documents"][0]["name"] == "taught.txt"
    assert math.isfinite(record["base_perplexity"])
    assert main(["diff", base.info.spec, str(tuned_dir), "--files", str(text),
                 "--max-tokens", "0"]) == 2
    assert "--max-tokens 0" in capsys.readouterr().err


def test_different_tokenizers_are_refused(models, tmp_path: Path):
    from transformers import AutoTokenizer

    base, tuned = models
    other = AutoTokenizer.from_pretrained(default_model_dir())
    with pytest.raises(TextgenError, match="tokenize the text differently"):
        diff_models(base, replace(tuned, tokenizer=other), [("t", TAUGHT)])
