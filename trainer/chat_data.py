"""Chat / instruction data: conversations in, packed blocks with loss on the assistant only.

A `.jsonl` row is either `{"messages": [{"role": ..., "content": ...}, ...]}` (the OpenAI /
Hugging Face chat format) or `{"prompt": ..., "completion": ...}` (strings, or message lists as
TRL writes them; an optional `"system"` string goes first). Each conversation is rendered with the
model's chat template (or `--chat-template FILE`) and cut into pieces at every assistant message:
the text up to and including the generation prompt is context (label -100), the assistant's
content and its end-of-turn marker are trained on. Pieces are tokenized one by one, so an
assistant turn is tokenized as the model will later generate it: fresh after the prompt.

Packing: whole conversations go into fixed blocks one after another (the next one starts a new
block when it does not fit; the rest of the block is padding with label -100). `position_ids`
restart at 0 for every conversation, and transformers builds a block-diagonal causal mask from
that (no cache, no attention mask), so a conversation never attends to the one before it in its
block: the loss is the same as training each one alone. A conversation longer than a block is
cut to the block (counted in the summary).

Why not TRL's SFTTrainer: it installs cleanly (trl 1.16, no other torch), but it replaces the
Trainer this project already configures (checkpoints, NaN guard, logs, LoRA, torchrun); its
padding-free packing needs flash-attention kernels that CPU runs lack; and its assistant-only
loss needs templates with `{% generation %}` markers, which SmolLM2's and most small models'
templates do not have. Rendering prefixes works with any template that renders a conversation
as the concatenation of its turns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from repl.errors import TextgenError

IGNORE = -100  # the label transformers' loss skips
ROLES = ("system", "user", "assistant", "tool")
Message = dict[str, str]


# ---------------------------------------------------------------- rows -> conversations

def is_chat_row(record: Any) -> bool:
    return isinstance(record, dict) and ("messages" in record or "prompt" in record)


def is_chat_files(paths: Sequence[str | Path]) -> bool:
    """Whether `paths` are .jsonl files (or folders of them) whose first row is a chat row."""
    files = _jsonl_files(paths)
    if not files:
        return False
    for file in files:
        for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                try:
                    return is_chat_row(json.loads(line))
                except json.JSONDecodeError:
                    return False
    return False


def _jsonl_files(paths: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.jsonl") if p.is_file())
        elif path.is_file() and path.suffix == ".jsonl":
            files.append(path)
        else:
            return []  # a text file or a missing path: not (only) chat data
    return files


def read_conversations(paths: Sequence[str | Path]) -> list[list[Message]]:
    """Every conversation in the .jsonl files (or folders of them), in order."""
    files = _jsonl_files(paths)
    if not files:
        raise TextgenError(f"chat data must be .jsonl files: {', '.join(map(str, paths))}")
    conversations: list[list[Message]] = []
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{file}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TextgenError(f"{where}: not valid JSON ({exc.msg}).") from None
            conversations.append(conversation_from_row(record, where))
    if not conversations:
        raise TextgenError(f"no conversations in {', '.join(map(str, paths))}.")
    return conversations


def conversation_from_row(record: Any, where: str = "row") -> list[Message]:
    """A row's messages, checked: roles known, contents strings, at least one assistant turn."""
    if not isinstance(record, dict):
        raise TextgenError(f"{where}: expected a JSON object with 'messages' or 'prompt' and "
                           "'completion'.")
    if "messages" in record:
        messages = _messages(record["messages"], where, "messages")
    elif "prompt" in record and "completion" in record:
        system = record.get("system")
        messages = [{"role": "system", "content": system}] if isinstance(system, str) else []
        messages += _side(record["prompt"], "user", where, "prompt")
        messages += _side(record["completion"], "assistant", where, "completion")
    else:
        raise TextgenError(f"{where}: expected 'messages', or 'prompt' and 'completion'.")
    if not any(m["role"] == "assistant" for m in messages):
        raise TextgenError(f"{where}: no assistant message, so nothing to learn from.")
    return messages


def _side(value: Any, role: str, where: str, name: str) -> list[Message]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return _messages(value, where, name)


def _messages(value: Any, where: str, name: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise TextgenError(f"{where}: {name!r} must be a non-empty list of messages.")
    out = []
    for i, message in enumerate(value):
        if not (isinstance(message, dict) and message.get("role") in ROLES
                and isinstance(message.get("content"), str)):
            raise TextgenError(f"{where}: {name}[{i}] must be an object with a 'role' "
                               f"({', '.join(ROLES)}) and a string 'content'.")
        out.append({"role": message["role"], "content": message["content"]})
    return out


# ---------------------------------------------------------------- conversations -> tokens

def chat_template_for(tokenizer: Any, template_file: Path | None) -> str:
    """The template to render with: the file's (installed on the tokenizer, so the saved model
    chats the same way) or the model's own."""
    if template_file is not None:
        try:
            template = Path(template_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TextgenError(f"--chat-template {template_file}: cannot read it ({exc}).") \
                from None
        if not template.strip():
            raise TextgenError(f"--chat-template {template_file}: the file is empty.")
        tokenizer.chat_template = template
        return template
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise TextgenError("the model has no chat template; pass --chat-template FILE (a Jinja "
                           "template like the ones in tokenizer_config.json).")
    return template


def render(tokenizer: Any, messages: list[Message], template: str, prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=prompt)
    except Exception as exc:  # jinja errors: a template that raises, or bad syntax
        raise TextgenError(f"the chat template failed: {exc}") from None


def encode_conversation(tokenizer: Any, messages: list[Message], template: str
                        ) -> tuple[list[int], list[int]]:
    """(input ids, labels): labels equal the ids on assistant content and end-of-turn, -100 on
    everything else."""
    full = render(tokenizer, messages, template, prompt=False)
    pieces: list[tuple[str, bool]] = []
    at = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], template, prompt=True) if i else ""
        through = render(tokenizer, messages[: i + 1], template, prompt=False)
        if not (full.startswith(through) and through.startswith(before)
                and len(before) >= at):
            raise TextgenError(
                "the chat template does not render a conversation as its turns one after "
                "another, so the assistant's tokens cannot be found; pass a --chat-template "
                "that does.")
        pieces += [(full[at:len(before)], False), (through[len(before):], True)]
        at = len(through)
    pieces.append((full[at:], False))
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in pieces:
        if not text:
            continue
        piece = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids += piece
        labels += piece if trained else [IGNORE] * len(piece)
    return ids, labels


# ---------------------------------------------------------------- tokens -> packed blocks

class ChatBlocks:
    """Packed conversations: each item has input_ids, labels (-100 off the assistant) and
    position_ids that restart at every conversation."""

    def __init__(self, ids: np.ndarray, labels: np.ndarray, positions: np.ndarray) -> None:
        self.blocks = ids
        self.labels = labels
        self.positions = positions

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        return {"input_ids": torch.from_numpy(self.blocks[index].copy()),
                "labels": torch.from_numpy(self.labels[index].copy()),
                "position_ids": torch.from_numpy(self.positions[index].copy())}

    def head(self, count: int) -> ChatBlocks:
        return ChatBlocks(self.blocks[:count], self.labels[:count], self.positions[:count])

    @property
    def tokens(self) -> int:
        """Tokens that carry loss (what perplexity is measured on)."""
        return int((self.labels != IGNORE).sum())


@dataclass
class Packing:
    blocks: ChatBlocks
    conversations: int
    truncated: int  # conversations longer than a block, cut to it
    fill: float  # share of block positions holding real tokens


def pack_conversations(encoded: Sequence[tuple[list[int], list[int]]], block_size: int,
                       pad_id: int) -> Packing:
    """Whole conversations into blocks of `block_size`, in order; padding (label -100) ends a
    block where the next conversation does not fit."""
    rows_ids: list[list[int]] = []
    rows_labels: list[list[int]] = []
    rows_pos: list[list[int]] = []
    truncated = used = 0
    for ids, labels in encoded:
        if len(ids) > block_size:
            ids, labels = ids[:block_size], labels[:block_size]
            truncated += 1
        if all(label == IGNORE for label in labels[1:]):  # nothing left to learn (cut off)
            continue
        if not rows_ids or len(rows_ids[-1]) + len(ids) > block_size:
            rows_ids.append([])
            rows_labels.append([])
            rows_pos.append([])
        rows_ids[-1] += ids
        rows_labels[-1] += labels
        rows_pos[-1] += range(len(ids))
        used += len(ids)
    for ids, labels, pos in zip(rows_ids, rows_labels, rows_pos, strict=True):
        pad = block_size - len(ids)
        ids += [pad_id] * pad
        labels += [IGNORE] * pad
        pos += range(pad)  # a padding "conversation" of its own, attended to by nothing
    shape = (len(rows_ids), block_size)
    blocks = ChatBlocks(np.array(rows_ids, dtype=np.int64).reshape(shape),
                        np.array(rows_labels, dtype=np.int64).reshape(shape),
                        np.array(rows_pos, dtype=np.int64).reshape(shape))
    fill = used / (shape[0] * block_size) if shape[0] else 0.0
    return Packing(blocks, len(encoded), truncated, fill)


# ---------------------------------------------------------------- everything a run needs

def prepare_chat_data(train_files: Sequence[str | Path], valid_files: Sequence[str | Path],
                      valid_fraction: float, subset: float, tokenizer: Any, block_size: int,
                      template_file: Path | None = None) -> tuple[ChatBlocks, ChatBlocks,
                                                                  dict[str, Any]]:
    """(train blocks, validation blocks, summary). Without `valid_files` the last
    `valid_fraction` of the conversations (at least one) validate: whole conversations, so no
    conversation is in both."""
    template = chat_template_for(tokenizer, template_file)
    conversations = read_conversations(train_files)
    if subset < 1:
        conversations = conversations[: max(1, round(len(conversations) * subset))]
    if valid_files:
        valid = read_conversations(valid_files)
        valid_source = "--valid-files"
    else:
        if len(conversations) < 2:
            raise TextgenError("a chat run needs at least 2 conversations (one validates); "
                               "add rows or pass --valid-files.")
        n_valid = max(1, round(len(conversations) * valid_fraction))
        conversations, valid = conversations[:-n_valid], conversations[-n_valid:]
        valid_source = f"last {n_valid} conversations of the training files"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    if pad_id is None:
        raise TextgenError("the tokenizer has neither a pad nor an EOS token to pad with.")
    train = pack_conversations([encode_conversation(tokenizer, c, template)
                                for c in conversations], block_size, pad_id)
    checked = pack_conversations([encode_conversation(tokenizer, c, template)
                                  for c in valid], block_size, pad_id)
    if len(train.blocks) == 0 or len(checked.blocks) == 0:
        raise TextgenError("no assistant tokens left to train or validate on (every "
                           "conversation was cut off before its answer); raise --block-size.")
    summary = {
        "source": f"chat: {', '.join(map(str, train_files))}",
        "format": "chat (loss on assistant tokens only)",
        "chat_template": str(template_file) if template_file else "the model's",
        "train_documents": train.conversations,
        "subset": subset,
        "block_size": block_size,
        "train_blocks": len(train.blocks),
        "train_tokens": int(train.blocks.blocks.size),
        "train_assistant_tokens": train.blocks.tokens,
        "truncated_conversations": train.truncated + checked.truncated,
        "packing_fill": round(train.fill, 4),
        "valid_blocks": len(checked.blocks),
        "valid_tokens": checked.blocks.tokens,
        "validation": valid_source,
    }
    return train.blocks, checked.blocks, summary


def disable_cache_in_training(model: Any) -> Any:
    """transformers builds the block-diagonal mask from restarting position_ids only when the
    forward pass has no cache; a model whose config says use_cache would make one on every
    training step. This turns it off for calls that bring no cache (training and evaluation),
    leaving generation (which passes its cache) as it was. Returns the hook handle."""
    inner = getattr(model, "base_model", model)

    def no_cache(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if kwargs.get("past_key_values") is None:
            kwargs["use_cache"] = False
        return args, kwargs

    return inner.register_forward_pre_hook(no_cache, with_kwargs=True)


def uses_chat_data(data: Any, chat_template: Path | None, arch: str = "transformer") -> bool:
    """Whether a run's data (a trainer.data.DataSpec) is chat data; checked before any work."""
    chat = not data.data_dir and bool(data.train_files) and is_chat_files(data.train_files)
    if chat_template is not None and not chat:
        raise TextgenError("--chat-template is for chat data: --train-files with .jsonl rows of "
                           "'messages' or 'prompt'/'completion'.")
    if chat and arch == "lstm":
        raise TextgenError("the LSTM baseline trains on plain text, not chat data.")
    if chat and data.valid_files and not is_chat_files(data.valid_files):
        raise TextgenError("--valid-files must be chat .jsonl too when the training data is.")
    return chat


def prepare_chat_training(data: Any, tokenizer: Any, block_size: int,
                          template_file: Path | None, model: Any) -> Any:
    """trainer.data.PreparedData for a chat run; turns the model's cache off in training so
    packed conversations stay apart (see disable_cache_in_training)."""
    from trainer.data import PreparedData

    train, valid, summary = prepare_chat_data(data.train_files, data.valid_files,
                                              data.valid_fraction, data.subset, tokenizer,
                                              block_size, template_file)
    disable_cache_in_training(model)
    return PreparedData(train, valid, summary)
