"""A tokenizer that needs neither torch nor transformers: the model's own `tokenizer.json` run by
the `tokenizers` library (what transformers' fast tokenizers wrap), and its chat template
rendered the way transformers renders it.

transformers' tokenizer classes import torch (seconds); this opens in milliseconds, which is
what lets the llama.cpp backend be ready within two seconds of start. It offers the part of the
transformers tokenizer interface the engine and the faces use, and a test checks it gives the
same ids, text and chat prompts as `AutoTokenizer` on the same files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from repl.errors import TextgenError

# transformers cuts a continued final message at this tag (utils/chat_template_utils.py).
CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]


class FastTokenizer:
    def __init__(self, tokenizer: Any, config: dict[str, Any], chat_template: str | None) -> None:
        self._tok = tokenizer
        self.chat_template = chat_template
        self.special_tokens = {name: _token_text(config.get(name)) for name in SPECIAL_NAMES}
        for name, text in self.special_tokens.items():
            setattr(self, f"{name}_id", tokenizer.token_to_id(text) if text else None)
        if self.pad_token_id is None:  # GPT-2 style: pad with EOS, as the engine does
            self.pad_token_id = self.eos_token_id

    bos_token_id: int | None
    eos_token_id: int | None
    unk_token_id: int | None
    pad_token_id: int | None

    @classmethod
    def from_dir(cls, path: Path) -> FastTokenizer:
        """Open the tokenizer saved in a `save_pretrained` directory (tokenizer.json)."""
        from tokenizers import Tokenizer

        file = path / "tokenizer.json"
        if not file.is_file():
            raise TextgenError(f"{path}: no tokenizer.json (a fast tokenizer is needed).")
        config_file = path / "tokenizer_config.json"
        config = json.loads(config_file.read_text("utf-8")) if config_file.is_file() else {}
        template = config.get("chat_template")
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text("utf-8")
        if isinstance(template, list):  # several named templates: the default one
            template = next((t["template"] for t in template if t.get("name") == "default"),
                            None)
        return cls(Tokenizer.from_file(str(file)), config, template)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __call__(self, text: str, add_special_tokens: bool = True) -> Encoded:
        return Encoded(self.encode(text, add_special_tokens=add_special_tokens))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, str]],
                            add_generation_prompt: bool = False,
                            continue_final_message: bool = False,
                            tokenize: bool = True) -> list[int] | str:
        """The chat prompt, as transformers' `apply_chat_template` renders it."""
        if not self.chat_template:
            raise TextgenError("this model has no chat template.")
        chat = [dict(m) for m in messages]
        if continue_final_message:
            final = chat[-1]["content"]
            chat[-1]["content"] = final + CONTINUE_TAG
        rendered = _compiled(self.chat_template).render(
            messages=chat, tools=None, documents=None,
            add_generation_prompt=add_generation_prompt, **self.special_tokens)
        if continue_final_message:
            tag = rendered.rindex(CONTINUE_TAG.strip())
            if rendered[tag:tag + len(CONTINUE_TAG)] == CONTINUE_TAG:
                rendered = rendered[:tag]
            else:  # the template trimmed the trailing space
                rendered = rendered[:tag].rstrip()
        if not tokenize:
            return rendered
        return self.encode(rendered, add_special_tokens=False)


def _token_text(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string, or an AddedToken-style dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


@lru_cache(maxsize=8)
def _compiled(template: str) -> Any:
    """The template in a sandbox, with the filters and globals transformers gives it."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)
