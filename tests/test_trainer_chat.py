"""Chat data for the trainer: rows read and checked, loss on the assistant tokens only (with
SmolLM2's real template), packing that restarts positions so a packed block scores exactly as
its conversations alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repl.errors import TextgenError
from trainer.chat_data import (
    IGNORE,
    conversation_from_row,
    disable_cache_in_training,
    encode_conversation,
    is_chat_files,
    pack_conversations,
    prepare_chat_data,
    read_conversations,
)

# A minimal template for the tiny GPT-2 (it has none): EOS ends every assistant turn.
TINY_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
                 "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


@pytest.fixture(scope="module")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from repl.models import default_model_dir

    return AutoTokenizer.from_pretrained(default_model_dir())


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    from tests.tiny_models import gpt2_tokenizer

    return gpt2_tokenizer()


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def trained_text(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """The decoded runs of positions that carry loss."""
    runs: list[list[int]] = []
    previous = IGNORE
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE:
            assert label == token
            if previous == IGNORE:
                runs.append([])
            runs[-1].append(token)
        previous = label
    return [tokenizer.decode(run) for run in runs]


def test_rows_in_both_formats_become_messages():
    assert conversation_from_row({"prompt": "Hi", "completion": "Hello!", "system": "Be brief"}) \
        == [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}]
    trl_style = {"prompt": [{"role": "user", "content": "2+2?"}],
                 "completion": [{"role": "assistant", "content": "4"}]}
    assert conversation_from_row(trl_style)[-1] == {"role": "assistant", "content": "4"}
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert conversation_from_row({"messages": messages}) == messages


@pytest.mark.parametrize(("row", "message"), [
    ({"text": "plain"}, "expected 'messages'"),
    ({"messages": [{"role": "user", "content": "a"}]}, "no assistant message"),
    ({"messages": [{"role": "wizard", "content": "a"}]}, "'role'"),
    ({"messages": [{"role": "user", "content": 3}]}, "string 'content'"),
    ({"messages": []}, "non-empty list"),
])
def test_bad_rows_are_named(row, message, tmp_path):
    path = write_rows(tmp_path / "bad.jsonl", [{"prompt": "ok", "completion": "fine"}, row])
    with pytest.raises(TextgenError, match=message) as caught:
        read_conversations([path])
    assert f"{path}:2" in str(caught.value)


def test_chat_files_are_told_from_text_files(tmp_path):
    chat = write_rows(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}])
    text = write_rows(tmp_path / "text.jsonl", [{"text": "a document"}])
    (tmp_path / "notes.txt").write_text("plain text")
    assert is_chat_files([chat]) and is_chat_files([tmp_path / "chat.jsonl"])
    assert not is_chat_files([text])
    assert not is_chat_files([chat, tmp_path / "notes.txt"])
    assert not is_chat_files([tmp_path / "missing.jsonl"])


def test_only_assistant_tokens_carry_loss_with_smollm2_template(smol_tokenizer):
    messages = [{"role": "system", "content": "You answer in one word."},
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris."},
                {"role": "user", "content": "And of Italy?"},
                {"role": "assistant", "content": "Rome."}]
    template = smol_tokenizer.chat_template
    ids, labels = encode_conversation(smol_tokenizer, messages, template)
    assert trained_text(smol_tokenizer, ids, labels) == ["Paris.<|im_end|>\n",
                                                         "Rome.<|im_end|>\n"]
    # Nothing is lost or added: the pieces are the whole rendered conversation.
    full = smol_tokenizer.apply_chat_template(messages, tokenize=False)
    assert smol_tokenizer.decode(ids) == full
    # The context before each answer is exactly what chat mode sends as the prompt.
    prompt = smol_tokenizer.apply_chat_template(messages[:2], tokenize=False,
                                                add_generation_prompt=True)
    first = labels.index(next(label for label in labels if label != IGNORE))
    assert smol_tokenizer.decode(ids[:first]) == prompt
    assert all(label == IGNORE for label in labels[:first])


def test_template_that_is_not_incremental_is_refused(gpt2_tokenizer):
    reversed_template = "{% for m in messages|reverse %}{{ m['content'] }}\n{% endfor %}"
    messages = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
                {"role": "user", "content": "three"}, {"role": "assistant", "content": "four"}]
    with pytest.raises(TextgenError, match="turns one after another"):
        encode_conversation(gpt2_tokenizer, messages, reversed_template)


def test_packing_keeps_whole_conversations_and_restarts_positions():
    a = ([1, 2, 3, 4], [IGNORE, IGNORE, 3, 4])
    b = ([5, 6, 7], [IGNORE, 6, 7])
    c = ([8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [IGNORE] * 5 + [13, 14, 15, 16, 17])
    packing = pack_conversations([a, b, c], block_size=8, pad_id=0)
    blocks = packing.blocks
    assert blocks.blocks.tolist() == [[1, 2, 3, 4, 5, 6, 7, 0], [8, 9, 10, 11, 12, 13, 14, 15]]
    assert blocks.labels.tolist()[0] == [IGNORE, IGNORE, 3, 4, IGNORE, 6, 7, IGNORE]
    assert blocks.positions.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0], list(range(8))]
    assert packing.truncated == 1 and blocks.tokens == 4 + 3
    item = blocks[0]
    assert set(item) == {"input_ids", "labels", "position_ids"}
    assert blocks.head(1).blocks.shape == (1, 8)


def test_a_packed_block_scores_exactly_as_its_conversations_alone():
    """No conversation sees the one before it in its block: the summed loss of the packed block
    equals the sum of each conversation's loss on its own (the model in train mode, as the
    Trainer calls it)."""
    import torch

    from tests.tiny_models import random_gpt2

    model = random_gpt2()
    model.config.attn_pdrop = model.config.resid_pdrop = model.config.embd_pdrop = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.config.use_cache = True
    handle = disable_cache_in_training(model)
    model.train()
    generator = torch.Generator().manual_seed(0)
    convs = []
    for length in (9, 13, 6):
        ids = torch.randint(0, 50257, (length,), generator=generator).tolist()
        labels = [IGNORE] * 3 + ids[3:]
        convs.append((ids, labels))
    packed = pack_conversations(convs, block_size=32, pad_id=0).blocks
    assert len(packed) == 1
    batch = {k: v.unsqueeze(0) for k, v in packed[0].items()}

    def summed_loss(input_ids, labels, **extra):
        logits = model(input_ids=input_ids, **extra).logits[0, :-1]
        target = labels[0, 1:]
        return torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE,
                                                 reduction="sum")

    with torch.no_grad():
        together = summed_loss(batch["input_ids"], batch["labels"],
                               position_ids=batch["position_ids"])
        alone = sum(summed_loss(torch.tensor([ids]), torch.tensor([labels]))
                    for ids, labels in convs)
        handle.remove()
        leaky = summed_loss(batch["input_ids"], batch["labels"])  # no positions: one sequence
    assert together.item() == pytest.approx(alone.item(), rel=1e-5)
    assert abs(leaky.item() - alone.item()) > 1e-3


def test_prepare_splits_whole_conversations_and_installs_the_template(gpt2_tokenizer, tmp_path):
    rows = [{"prompt": f"Say {i}", "completion": f"{i} it is."} for i in range(40)]
    path = write_rows(tmp_path / "chat.jsonl", rows)
    template = tmp_path / "chat.jinja"
    template.write_text(TINY_TEMPLATE)
    tokenizer = gpt2_tokenizer
    train, valid, summary = prepare_chat_data([path], [], 0.1, 1.0, tokenizer, 64, template)
    assert tokenizer.chat_template == TINY_TEMPLATE  # saved with the model: it chats the same
    assert summary["train_documents"] == 36 and summary["validation"].startswith("last 4")
    assert summary["valid_tokens"] == valid.tokens > 0
    assert summary["format"].startswith("chat")
    # Every trained run is an answer followed by EOS.
    texts = trained_text(tokenizer, train.blocks.ravel().tolist(), train.labels.ravel().tolist())
    assert texts and all(t.endswith(" it is.<|endoftext|>") for t in texts)
    with pytest.raises(TextgenError, match="no chat template"):
        tokenizer.chat_template = None
        prepare_chat_data([path], [], 0.1, 1.0, tokenizer, 64, None)


def chat_rows(count: int) -> list[dict]:
    colours = ["red", "green", "blue", "amber", "violet"]
    rows = []
    for i in range(count):
        colour = colours[i % len(colours)]
        if i % 2:
            rows.append({"prompt": f"Name colour number {i}.", "completion": f"It is {colour}."})
        else:
            rows.append({"messages": [{"role": "user", "content": f"Colour {i}?"},
                                      {"role": "assistant", "content": f"It is {colour}."}]})
    return rows


def test_a_chat_run_trains_saves_its_template_and_answers_in_chat_mode(tiny_model_dir,
                                                                        tmp_path, capsys):
    """A few hundred rows, a few steps, then the saved model answers through `textgen generate
    --chat` with the template it was trained with."""
    from repl.cli import main as textgen
    from trainer.cli import main

    data = write_rows(tmp_path / "chat.jsonl", chat_rows(300))
    template = tmp_path / "chat.jinja"
    template.write_text(TINY_TEMPLATE)
    output = tmp_path / "chat-ft"
    assert main(["train", "--model", str(tiny_model_dir), "--train-files", str(data),
                 "--chat-template", str(template), "--output", str(output), "--block-size",
                 "64", "--batch-size", "4", "--max-steps", "3", "--lr", "1e-3"]) == 0
    out = capsys.readouterr().out
    assert f"textgen --chat --model {output}" in out
    report = json.loads((output / "report.json").read_text())
    assert report["data"]["format"] == "chat (loss on assistant tokens only)"
    assert report["data"]["train_documents"] == 285
    assert report["validation"]["tokens"] == report["data"]["valid_tokens"] > 0
    assert [entry["step"] for entry in report["samples_by_step"]] == [0, 3]
    assert (output / "chat_template.jinja").read_text() == TINY_TEMPLATE \
        or json.loads((output / "tokenizer_config.json").read_text())["chat_template"] \
        == TINY_TEMPLATE
    assert textgen(["generate", "Colour 7?", "--chat", "--model", str(output),
                    "--max-new-tokens", "6", "--seed", "1"]) == 0
    assert capsys.readouterr().out.strip()


def test_chat_flags_are_checked_before_any_work(tiny_model_dir, tmp_path, capsys):
    from trainer.cli import main

    text = tmp_path / "notes.txt"
    text.write_text("plain text " * 50)
    template = tmp_path / "t.jinja"
    template.write_text(TINY_TEMPLATE)
    assert main(["train", "--model", str(tiny_model_dir), "--train-files", str(text),
                 "--chat-template", str(template), "--output", str(tmp_path / "x")]) == 2
    assert "--chat-template is for chat data" in capsys.readouterr().err
    data = write_rows(tmp_path / "chat.jsonl", chat_rows(10))
    assert main(["train", "--model", str(tiny_model_dir), "--train-files", str(data),
                 "--output", str(tmp_path / "y"), "--max-steps", "1"]) == 2
    assert "no chat template; pass --chat-template" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y" / "report.json").exists()
