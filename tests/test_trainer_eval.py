"""trainer.evaluate: sliding-window perplexity counts every token once; sample measures."""

from __future__ import annotations

import json
import math

import pytest
import torch

from repl.errors import TextgenError
from trainer.cli import main
from trainer.evaluate import (
    distinct_n,
    perplexity,
    repetition_rate,
    sliding_window_nll,
)


@pytest.fixture(scope="module")
def stream(tiny_loaded):
    text = "The committee met on Tuesday to discuss the budget for the coming year. " * 6
    return tiny_loaded.tokenizer(text).input_ids[:70]


def full_context_nll(model, ids) -> float:
    with torch.inference_mode():
        x = torch.tensor([ids])
        logits = model(input_ids=x).logits[0, :-1]
        return torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()


@pytest.mark.parametrize(("window", "stride"),
                         [(16, 15), (16, 8), (16, 1), (64, 5), (200, 50), (2, 1)])
def test_every_token_after_the_first_is_scored_exactly_once(tiny_loaded, stream, window, stride):
    _, scored, windows = sliding_window_nll(tiny_loaded.model, stream, window, stride,
                                            progress=False)
    assert scored == len(stream) - 1
    expected = 1 + max(0, math.ceil((len(stream) - window) / stride))
    assert windows == expected


def test_a_window_covering_the_text_equals_the_full_context_loss(tiny_loaded, stream):
    nll, scored, _ = sliding_window_nll(tiny_loaded.model, stream, 128, 64, progress=False)
    assert nll == pytest.approx(full_context_nll(tiny_loaded.model, stream), rel=1e-5)
    result = perplexity(tiny_loaded.model, stream, 128, 64, progress=False)
    assert result.perplexity == pytest.approx(math.exp(nll / scored), rel=1e-6)
    assert "69 tokens scored, window 128, stride 64" in result.method()


def test_more_context_changes_the_score_of_later_windows(tiny_loaded, stream):
    # a stride near the window leaves little context; a small stride keeps more: different sums
    restart, _, _ = sliding_window_nll(tiny_loaded.model, stream, 16, 15, progress=False)
    overlap, _, _ = sliding_window_nll(tiny_loaded.model, stream, 16, 4, progress=False)
    assert restart != pytest.approx(overlap, rel=1e-6)


def test_bad_window_or_stride_is_a_clear_error(tiny_loaded, stream):
    for stride in (16, 20, 0):
        with pytest.raises(TextgenError, match=f"--stride {stride}: use a value from 1 to 15"):
            sliding_window_nll(tiny_loaded.model, stream, 16, stride, progress=False)
    with pytest.raises(TextgenError, match="--window 1"):
        sliding_window_nll(tiny_loaded.model, stream, 1, 1, progress=False)


def test_distinct_and_repetition_measures():
    texts = ["a b c d", "a b a b a b"]
    # unigrams: 4 + 6 = 10, unique {a,b,c,d} = 4
    assert distinct_n(texts, 1) == pytest.approx(0.4)
    # bigrams: 3 + 5 = 8; unique {ab, bc, cd, ba} = 4
    assert distinct_n(texts, 2) == pytest.approx(0.5)
    # 4-grams: text 1 has one (no repeats); text 2 has 3, unique 2 -> 1/3 repeated
    assert repetition_rate(texts, 4) == pytest.approx((0 + 1 / 3) / 2)
    assert distinct_n([], 1) == 0.0


def test_eval_cli_json_states_the_method(tiny_model_dir, tmp_path, capsys):
    rows = tmp_path / "eval.jsonl"
    rows.write_text("\n".join(json.dumps({"text": f"Document {i}: a small piece of text for "
                                                    "the evaluation of perplexity. " * 5})
                              for i in range(3)))
    code = main(["eval", "--model", str(tiny_model_dir), "--files", str(rows), "--window", "64",
                 "--stride", "32", "--samples", "2", "--json", "--cache-dir", str(tmp_path)])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    ppl = record["perplexity"]
    assert ppl["window"] == 64 and ppl["stride"] == 32
    assert ppl["tokens_scored"] == record["total_tokens"] - 1
    assert "window 64, stride 32" in ppl["method"]
    assert ppl["perplexity"] > 1
    quality = record["quality"]
    assert len(quality["samples"]) == 2
    assert 0 <= quality["distinct_1"] <= 1 and 0 <= quality["repetition_rate"] <= 1


def test_eval_cli_text_output_names_tokens_window_stride_and_subset(tiny_model_dir, tmp_path,
                                                                    capsys):
    folder = tmp_path / "wt"
    folder.mkdir()
    (folder / "wiki.valid.raw").write_text(" \n = Topic = \n" + " Some words here . \n" * 40)
    code = main(["eval", "--model", str(tiny_model_dir), "--data-dir", str(folder),
                 "--max-tokens", "100", "--window", "32", "--samples", "0",
                 "--cache-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "99 tokens scored, window 32, stride 16" in out
    assert "subset: the first 100 of" in out


def test_eval_cli_rejects_a_window_beyond_the_context(tiny_model_dir, tmp_path, capsys):
    text = tmp_path / "eval.txt"
    text.write_text("words " * 50)
    code = main(["eval", "--model", str(tiny_model_dir), "--files", str(text),
                 "--window", "4096", "--cache-dir", str(tmp_path)])
    assert code == 2
    assert "larger than the model's context of 256" in capsys.readouterr().err


@pytest.mark.slow
def test_default_model_perplexity_on_wikitext_like_text_is_sane(default_loaded, tmp_path):
    from trainer.evaluate import evaluate

    docs = [" = Valkyria Chronicles = \n The game was released in Japan in 2011 . It is a "
            "tactical role @-@ playing game developed by Sega and Media.Vision for the "
            "PlayStation Portable . The story follows a squad of soldiers during a war . \n"]
    report = evaluate("default", docs, "inline", "valid", window=64, stride=32, samples=1,
                      cache_dir=tmp_path, progress=False, loaded=default_loaded)
    assert 1 < report.perplexity.perplexity < 200  # a trained model, not a random one
    assert report.quality is not None and report.quality.samples[0]["continuation"]


def guide_loop(model, encodings, max_length: int, stride: int) -> float:
    """The Hugging Face perplexity guide's loop, verbatim (docs: perplexity.md)."""
    seq_len = encodings.input_ids.size(1)
    nll_sum = 0.0
    n_tokens = 0
    prev_end_loc = 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc  # may be different from stride on last loop
        input_ids = encodings.input_ids[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            outputs = model(input_ids, labels=target_ids)
            neg_log_likelihood = outputs.loss
        num_valid_tokens = (target_ids != -100).sum().item()
        batch_size = target_ids.size(0)
        num_loss_tokens = num_valid_tokens - batch_size
        nll_sum += neg_log_likelihood * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    avg_nll = nll_sum / n_tokens
    return torch.exp(avg_nll).item()


WIKI_ROWS = [" = Topic = \n", "", " The first paragraph has a few words . \n", "",
             " = = Section = = \n", "", " More text follows here , and then some . \n", "",
             " = Other = \n", "", " A second article begins . \n"]


@pytest.mark.parametrize(("window", "stride"), [(64, 32), (32, 32), (48, 20)])
def test_hf_guide_layout_is_exactly_the_guides_loop(tiny_model_dir, tiny_loaded, tmp_path,
                                                   capsys, window, stride):
    folder = tmp_path / "wt"
    folder.mkdir()
    (folder / "wiki.test.raw").write_text("".join(row or " \n" for row in WIKI_ROWS * 8))
    code = main(["eval", "--model", str(tiny_model_dir), "--data-dir", str(folder),
                 "--split", "test", "--layout", "hf-guide", "--window", str(window),
                 "--stride", str(stride), "--samples", "0", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    encodings = tiny_loaded.tokenizer("\n\n".join(WIKI_ROWS * 8), return_tensors="pt")
    expected = guide_loop(tiny_loaded.model, encodings, window, stride)
    assert record["perplexity"]["layout"] == "hf-guide"
    assert record["perplexity"]["perplexity"] == pytest.approx(expected, rel=1e-6)
    assert record["perplexity"]["method"].startswith("layout hf-guide: rows joined with blank")


def test_the_two_layouts_differ_and_the_text_output_names_its_layout(tiny_model_dir, tmp_path,
                                                                     capsys):
    folder = tmp_path / "wt"
    folder.mkdir()
    (folder / "wiki.test.raw").write_text("".join(row or " \n" for row in WIKI_ROWS * 8))
    results = {}
    for layout in ("articles", "hf-guide"):
        assert main(["eval", "--model", str(tiny_model_dir), "--data-dir", str(folder),
                     "--split", "test", "--layout", layout, "--window", "64", "--stride", "32",
                     "--samples", "0", "--cache-dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert f"split test, layout {layout}" in out
        assert f"method: layout {layout}:" in out
        results[layout] = out
    assert results["articles"] != results["hf-guide"]
