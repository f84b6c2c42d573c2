"""trainer.data: WikiText folders, the user's files, tokenizing once, packing without padding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from repl.errors import TextgenError
from trainer import data
from trainer.data import (
    DataSpec,
    pack,
    prepare_training_data,
    tokenize_documents,
    user_documents,
    wikitext_articles,
    wikitext_from_dir,
)

ROWS = [" \n", " = Alpha = \n", " \n", " Alpha is first . \n", " = = History = = \n",
        " It began . \n", " = Beta = \n", " Beta is second . \n"]


@pytest.fixture(scope="module")
def tokenizer(tiny_loaded):
    return tiny_loaded.tokenizer


def write_wikitext(folder: Path, suffix: str, splits=("train", "valid", "test")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        (folder / f"wiki.{split}{suffix}").write_text("".join(ROWS))
    return folder


def test_articles_start_at_top_level_headings_and_drop_blank_rows():
    articles = wikitext_articles(ROWS)
    assert articles == [" = Alpha = \n Alpha is first . \n = = History = = \n It began . \n",
                        " = Beta = \n Beta is second . \n"]


@pytest.mark.parametrize("suffix", [".tokens", ".raw"])
def test_data_dir_reads_either_wikitext_flavour(tmp_path, suffix):
    folder = write_wikitext(tmp_path / "wt", suffix)
    docs = wikitext_from_dir(folder, ["train", "valid"])
    assert set(docs) == {"train", "valid"}
    assert docs["valid"][1].startswith(" = Beta = ")


def test_raw_folder_without_train_says_so_and_points_at_the_tokens_version(tmp_path):
    folder = write_wikitext(tmp_path / "raw", ".raw", splits=("valid", "test"))
    assert wikitext_from_dir(folder, ["valid"])["valid"]  # eval on valid still works
    with pytest.raises(TextgenError, match=r"wiki\.train\.raw not found.*raw training split is "
                                           r"missing.*wikitext-2-v1"):
        wikitext_from_dir(folder, ["train", "valid"])


def test_folder_without_wikitext_files_lists_the_expected_names(tmp_path):
    with pytest.raises(TextgenError, match=r"no WikiText files; expected wiki\.train\.raw"):
        wikitext_from_dir(tmp_path, ["train"])
    with pytest.raises(TextgenError, match="no such directory"):
        wikitext_from_dir(tmp_path / "missing", ["train"])


def test_hub_failure_offline_points_at_data_dir(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(TextgenError, match=r"load_dataset\('wikitext'.*--data-dir DIR"):
        data.split_documents(DataSpec(), ["train"])


def test_real_offline_load_dataset_fails_with_the_message(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    with pytest.raises(TextgenError, match="--data-dir"):
        data.wikitext_from_hub(["valid"])


def test_user_files_txt_folder_and_jsonl(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("first document")
    (tmp_path / "notes" / "b.md").write_text("second document")
    (tmp_path / "notes" / "skip.bin").write_bytes(b"\x00\x01")  # not a text suffix: ignored
    rows = [{"text": "row one"}, {"text": "  "}, {"text": "row two"}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    docs = user_documents([tmp_path / "notes", tmp_path / "rows.jsonl"])
    assert docs == ["first document", "second document", "row one", "row two"]


@pytest.mark.parametrize(("content", "message"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not a text file"),
    (b"caf\xe9 au lait", "not a UTF-8 text file"),
    (b"", "the files are empty"),
])
def test_bad_user_files_get_one_clear_message(tmp_path, content, message):
    path = tmp_path / "input.txt"
    path.write_bytes(content)
    with pytest.raises(TextgenError, match=message):
        user_documents([path])


def test_bad_jsonl_rows_name_the_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    with pytest.raises(TextgenError, match=r"rows\.jsonl:2: expected an object with a string "
                                           r"'text' field"):
        user_documents([path])
    with pytest.raises(TextgenError, match="no such file or folder"):
        user_documents([tmp_path / "nope.txt"])


def test_tokenize_puts_eos_after_every_document_and_caches(tokenizer, tmp_path):
    docs = ["hello world", "second one here"]
    ids = tokenize_documents(docs, tokenizer, tmp_path)
    eos = tokenizer.eos_token_id
    expected = []
    for doc in docs:
        expected += [*tokenizer(doc, add_special_tokens=False).input_ids, eos]
    assert ids.tolist() == expected
    cached = list((tmp_path / "textgen-tokenized").glob("*.arrow"))
    assert len(cached) == 1
    again = tokenize_documents(docs, tokenizer, tmp_path)
    assert again.tolist() == expected
    assert list((tmp_path / "textgen-tokenized").glob("*.arrow")) == cached


def test_pack_makes_full_blocks_only():
    blocks = pack(np.arange(10), 4)
    assert blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_prepared_user_data_has_no_padding_and_a_validation_tail(tokenizer, tmp_path):
    path = tmp_path / "story.txt"
    path.write_text("Once upon a time there was a tiny model. " * 60)
    prepared = prepare_training_data(DataSpec(train_files=[str(path)], valid_fraction=0.1),
                                     tokenizer, 16, tmp_path)
    item = prepared.train[0]
    assert item["input_ids"].shape == (16,)
    assert (item["labels"] == item["input_ids"]).all()
    total = len(tokenize_documents([path.read_text()], tokenizer, tmp_path)) // 16
    assert len(prepared.train) + len(prepared.valid) == total
    assert len(prepared.valid) == round(total * 0.1)
    assert prepared.summary["validation"].startswith("last ")


def test_too_little_text_for_a_block_is_a_clear_error(tokenizer, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("just a few words")
    with pytest.raises(TextgenError, match="too little text.*lower --block-size"):
        prepare_training_data(DataSpec(train_files=[str(path)]), tokenizer, 64, tmp_path)


def test_subset_keeps_the_first_fraction_of_documents(tokenizer, tmp_path):
    folder = tmp_path / "wt"
    folder.mkdir()
    article = " = Title {} = \n" + " words of the article go here . \n" * 5
    (folder / "wiki.train.tokens").write_text("".join(article.format(i) for i in range(10)))
    (folder / "wiki.valid.tokens").write_text(article.format("v") * 3)
    half = prepare_training_data(DataSpec(data_dir=folder, subset=0.5), tokenizer, 8, tmp_path)
    assert half.summary["train_documents"] == 5
    with pytest.raises(TextgenError, match="--subset"):
        prepare_training_data(DataSpec(data_dir=folder, subset=0), tokenizer, 8, tmp_path)
