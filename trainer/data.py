"""Training text in, packed token blocks out.

Sources: WikiText-2 from the Hugging Face hub or its cache, the same splits from local files
(`--data-dir`), or the user's own files (`--train-files`). Documents are tokenized once (cached by
`datasets` under a key made of the text and the tokenizer), joined with EOS between them and cut
into fixed blocks, so no position is spent on padding.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from repl.errors import TextgenError

SPLITS = ("train", "valid", "test")
WIKITEXT_HUB = ("wikitext", "wikitext-2-raw-v1")
TEXT_SUFFIXES = (".txt", ".md", ".text", ".raw", ".tokens")
# A top-level WikiText heading (" = Title = "); sections are " = = Section = = ".
_ARTICLE_HEADING = re.compile(r"^ = [^=].* = $")


# ---------------------------------------------------------------- documents from each source

def wikitext_articles(rows: Iterable[str]) -> list[str]:
    """Group WikiText rows into articles (each starts at a top-level heading); blank rows go."""
    articles: list[list[str]] = []
    for row in rows:
        if not row.strip():
            continue
        text = row if row.endswith("\n") else row + "\n"
        if _ARTICLE_HEADING.match(text.rstrip("\n")) or not articles:
            articles.append([])
        articles[-1].append(text)
    return ["".join(parts) for parts in articles]


def wikitext_dir_files(data_dir: Path) -> dict[str, Path]:
    """The split files in a WikiText-2 folder: `wiki.SPLIT.raw` (raw) or `wiki.SPLIT.tokens`."""
    if not data_dir.is_dir():
        raise TextgenError(f"--data-dir {data_dir}: no such directory.")
    for suffix in (".raw", ".tokens"):
        found = {s: data_dir / f"wiki.{s}{suffix}" for s in SPLITS}
        found = {s: p for s, p in found.items() if p.is_file()}
        if found:
            return found
    raise TextgenError(
        f"--data-dir {data_dir}: no WikiText files; expected wiki.train.raw, wiki.valid.raw, "
        "wiki.test.raw (wikitext-2-raw-v1) or wiki.train.tokens, ... (wikitext-2-v1)."
    )


def wikitext_from_dir(data_dir: Path, splits: Sequence[str]) -> dict[str, list[str]]:
    """Articles of each requested split from a local WikiText-2 folder."""
    return {s: wikitext_articles(rows) for s, rows in wikitext_rows_from_dir(data_dir,
                                                                              splits).items()}


def wikitext_rows_from_dir(data_dir: Path, splits: Sequence[str]) -> dict[str, list[str]]:
    """The rows of each split as the hub's `wikitext` dataset has them: one line each, with its
    newline; a blank line is an empty row."""
    files = wikitext_dir_files(data_dir)
    missing = [s for s in splits if s not in files]
    if missing:
        have = ", ".join(p.name for p in files.values())
        wanted = ", ".join(f"wiki.{s}{next(iter(files.values())).suffix}" for s in missing)
        hint = ""
        if "train" in missing and next(iter(files.values())).suffix == ".raw":
            hint = (" The raw training split is missing: use the tokenized wikitext-2-v1 folder "
                    "(wiki.train.tokens, the same text with <unk> for rare words), or put "
                    "wiki.train.raw from wikitext-2-raw-v1.zip here.")
        raise TextgenError(f"--data-dir {data_dir}: {wanted} not found (it has {have}).{hint}")
    return {s: [row if row.strip() else "" for row in
                _read_text(files[s]).splitlines(keepends=True)] for s in splits}


def wikitext_from_hub(splits: Sequence[str]) -> dict[str, list[str]]:
    """Articles of each requested split of WikiText-2 (raw) from the hub or its cache."""
    return {s: wikitext_articles(rows) for s, rows in wikitext_rows_from_hub(splits).items()}


def wikitext_rows_from_hub(splits: Sequence[str]) -> dict[str, list[str]]:
    """WikiText-2 (raw) rows through `datasets`: from its cache, or downloaded when online."""
    import logging

    import datasets

    names = {"train": "train", "valid": "validation", "test": "test"}
    # The hub client logs each failed request; offline, our one message below says it all.
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        loaded = datasets.load_dataset(*WIKITEXT_HUB)
    except Exception as exc:  # offline, no cache, hub errors: all mean "use --data-dir"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TextgenError(
            "WikiText-2 could not be loaded with load_dataset('wikitext', 'wikitext-2-raw-v1') "
            f"(offline and not cached?): {first}. Pass --data-dir DIR with the files "
            "wiki.{train,valid,test}.raw or wiki.*.tokens, or --train-files for your own text."
        ) from exc
    finally:
        hub_logger.setLevel(level)
    return {s: list(loaded[names[s]]["text"]) for s in splits}


def user_documents(paths: Sequence[str | Path], text_field: str = "text") -> list[str]:
    """Documents from .txt/.md files (one document each), .jsonl files (one per row, from
    `text_field`) and folders of those (recursively, in name order)."""
    documents: list[str] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix in (*TEXT_SUFFIXES, ".jsonl"))
            if not files:
                raise TextgenError(f"{path}: the folder has no .txt, .md or .jsonl files.")
        elif path.is_file():
            files = [path]
        else:
            raise TextgenError(f"{path}: no such file or folder.")
        for file in files:
            found = _jsonl_documents(file, text_field) if file.suffix == ".jsonl" else (
                [_read_text(file)])
            documents.extend(doc for doc in found if doc.strip())
    if not documents:
        raise TextgenError(f"no text in {', '.join(map(str, paths))}: the files are empty.")
    return documents


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:65536]:
        raise TextgenError(f"{path}: not a text file (it contains binary data).")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextgenError(
            f"{path}: not a UTF-8 text file (byte {exc.start} is invalid)."
        ) from None


def _jsonl_documents(path: Path, text_field: str) -> list[str]:
    documents = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TextgenError(f"{path}:{number}: not valid JSON ({exc.msg}).") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise TextgenError(f"{path}:{number}: expected an object with a string "
                               f"{text_field!r} field.")
        documents.append(record[text_field])
    return documents


# ---------------------------------------------------------------- tokens and blocks

def tokenize_documents(documents: Sequence[str], tokenizer: Any, cache_dir: Path | None = None,
                       desc: str = "Tokenizing") -> np.ndarray:
    """One stream of token ids, EOS after every document. Tokenized with a `datasets` map (a
    progress bar, cached on disk so the next run with the same text and tokenizer skips it)."""
    import datasets

    eos = tokenizer.eos_token_id
    if eos is None:
        raise TextgenError("the tokenizer has no EOS token to separate documents with.")
    key = _cache_key(documents, tokenizer)
    cache_dir = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "textgen-tokenized"
    cache_dir.mkdir(parents=True, exist_ok=True)

    def encode(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [[*row, eos] for row in ids]}

    table = datasets.Dataset.from_dict({"text": list(documents)}).map(
        encode, batched=True, remove_columns=["text"], desc=desc,
        cache_file_name=str(cache_dir / f"{key}.arrow"),
    )
    column = table.with_format("numpy")["input_ids"]
    return np.fromiter(itertools.chain.from_iterable(column), dtype=np.int64)


def _cache_key(documents: Sequence[str], tokenizer: Any) -> str:
    digest = hashlib.sha256()
    for doc in documents:
        digest.update(hashlib.sha256(doc.encode()).digest())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    identity = backend.to_str() if backend is not None else json.dumps(
        sorted(tokenizer.get_vocab().items()))
    digest.update(identity.encode())
    digest.update(str(tokenizer.eos_token_id).encode())
    return digest.hexdigest()[:32]


def pack(ids: np.ndarray, block_size: int) -> np.ndarray:
    """Cut a token stream into (n, block_size) blocks; the tail shorter than a block is dropped."""
    count = len(ids) // block_size
    return ids[: count * block_size].reshape(count, block_size)


class PackedBlocks:
    """A map-style dataset of fixed-size blocks: every position is a real token (labels are the
    inputs; the model shifts them)."""

    def __init__(self, blocks: np.ndarray) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        row = torch.from_numpy(self.blocks[index].copy())
        return {"input_ids": row, "labels": row.clone()}

    def head(self, count: int) -> PackedBlocks:
        return PackedBlocks(self.blocks[:count])

    @property
    def tokens(self) -> int:
        return int(self.blocks.size)


# ---------------------------------------------------------------- everything a run needs

@dataclass
class DataSpec:
    """Where the text comes from, as the command line said."""

    data_dir: Path | None = None
    train_files: list[str] = field(default_factory=list)
    valid_files: list[str] = field(default_factory=list)
    text_field: str = "text"
    subset: float = 1.0
    valid_fraction: float = 0.05

    def describe(self) -> str:
        if self.data_dir:
            return f"WikiText-2 from {self.data_dir}"
        if self.train_files:
            return f"files: {', '.join(map(str, self.train_files))}"
        return "WikiText-2 (hub: wikitext/wikitext-2-raw-v1)"


@dataclass
class PreparedData:
    train: PackedBlocks
    valid: PackedBlocks
    summary: dict[str, Any]


def split_documents(spec: DataSpec, splits: Sequence[str]) -> dict[str, list[str]]:
    """The documents of each split a run needs (user files have no test split)."""
    if spec.data_dir is not None:
        return wikitext_from_dir(spec.data_dir, splits)
    if spec.train_files:
        out: dict[str, list[str]] = {}
        if "train" in splits:
            out["train"] = user_documents(spec.train_files, spec.text_field)
        if "valid" in splits and spec.valid_files:
            out["valid"] = user_documents(spec.valid_files, spec.text_field)
        return out
    return wikitext_from_hub(splits)


def split_rows(spec: DataSpec, split: str) -> list[str]:
    """The rows of a WikiText-2 split (for the HF perplexity guide's layout)."""
    if spec.data_dir is not None:
        return wikitext_rows_from_dir(spec.data_dir, [split])[split]
    return wikitext_rows_from_hub([split])[split]


def prepare_training_data(spec: DataSpec, tokenizer: Any, block_size: int,
                          cache_dir: Path | None = None) -> PreparedData:
    """Train and validation blocks. User files without --valid-files give their last
    `valid_fraction` of blocks (at least one) to validation."""
    if not 0 < spec.subset <= 1:
        raise TextgenError(f"--subset {spec.subset}: use a fraction in (0, 1].")
    docs = split_documents(spec, ["train", "valid"])
    train_docs = docs["train"]
    if spec.subset < 1:
        train_docs = train_docs[: max(1, math.ceil(len(train_docs) * spec.subset))]
    train_blocks = pack(tokenize_documents(train_docs, tokenizer, cache_dir, "Tokenizing train"),
                        block_size)
    if "valid" in docs:
        valid_blocks = pack(tokenize_documents(docs["valid"], tokenizer, cache_dir,
                                               "Tokenizing valid"), block_size)
        valid_source = "valid split"
    else:
        if len(train_blocks) < 2:
            raise TextgenError(
                f"too little text: {len(train_blocks)} block(s) of {block_size} tokens; a run "
                "needs at least 2 (one for validation). Add text or lower --block-size."
            )
        n_valid = max(1, round(len(train_blocks) * spec.valid_fraction))
        train_blocks, valid_blocks = train_blocks[:-n_valid], train_blocks[-n_valid:]
        valid_source = f"last {n_valid} blocks of the training text"
    if len(train_blocks) == 0:
        raise TextgenError(f"too little training text for one block of {block_size} tokens; "
                           "add text or lower --block-size.")
    if len(valid_blocks) == 0:
        raise TextgenError(f"the validation text is shorter than one block of {block_size} "
                           "tokens; add text or lower --block-size.")
    summary = {
        "source": spec.describe(),
        "train_documents": len(train_docs),
        "subset": spec.subset,
        "block_size": block_size,
        "train_blocks": len(train_blocks),
        "train_tokens": int(train_blocks.size),
        "valid_blocks": len(valid_blocks),
        "valid_tokens": int(valid_blocks.size),
        "validation": valid_source,
    }
    return PreparedData(PackedBlocks(train_blocks), PackedBlocks(valid_blocks), summary)
