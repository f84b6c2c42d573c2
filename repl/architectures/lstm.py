"""The LSTM baseline: a word-piece LSTM language model that generates like any transformers model.

`textgen-train train --arch lstm` trains it on the same tokens and tokenizer as a transformer, and
`textgen --model models/NAME` loads it through `AutoModelForCausalLM` (this module registers the
config and model with the Auto classes). It has no context limit: the recurrent state carries the
past, and generation feeds one token at a time with that state as its cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.utils import ModelOutput

LSTMState = tuple[torch.Tensor, torch.Tensor]


class TextgenLSTMConfig(PretrainedConfig):
    model_type = "textgen-lstm"

    def __init__(self, vocab_size: int = 50257, hidden_size: int = 512, num_layers: int = 2,
                 dropout: float = 0.2, tie_word_embeddings: bool = True,
                 initializer_range: float = 0.05, **kwargs) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.initializer_range = initializer_range
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


@dataclass
class TextgenLSTMOutput(ModelOutput):
    """`state` is (h, c), each (num_layers, batch, hidden): generate() carries it as the cache
    (the name `state` is one of transformers' known cache names)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    state: LSTMState | None = None


class TextgenLSTMForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = TextgenLSTMConfig
    base_model_prefix = "lstm_lm"
    main_input_name = "input_ids"
    _tied_weights_keys = {"lm_head.weight": "embed.weight"}  # noqa: RUF012 (transformers' shape)

    def __init__(self, config: TextgenLSTMConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.drop = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(config.hidden_size, config.hidden_size, config.num_layers,
                            dropout=config.dropout if config.num_layers > 1 else 0.0,
                            batch_first=True)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the recurrent state is the cache, not a key/value cache

    def _init_weights(self, module: nn.Module) -> None:
        scale = self.config.initializer_range
        if isinstance(module, nn.Embedding | nn.Linear):
            nn.init.uniform_(module.weight, -scale, scale)
        elif isinstance(module, nn.LSTM):
            for name, param in module.named_parameters():
                if "bias" in name:
                    nn.init.zeros_(param)
                else:
                    nn.init.uniform_(param, -scale, scale)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                state: LSTMState | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, **kwargs) -> TextgenLSTMOutput:
        # attention_mask is accepted for API compatibility; packed training data has no padding.
        hidden, new_state = self.lstm(self.drop(self.embed(input_ids)), state)
        logits = self.lm_head(self.drop(hidden))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        return TextgenLSTMOutput(loss=loss, logits=logits,
                                 state=new_state if use_cache is not False else None)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor,
                                      state: LSTMState | None = None,
                                      use_cache: bool | None = None, **kwargs) -> dict:
        """With a state only the newest token is fed; without one, the whole prompt."""
        if state is not None:
            input_ids = input_ids[:, -1:]
        return {"input_ids": input_ids, "state": state, "use_cache": use_cache}


AutoConfig.register(TextgenLSTMConfig.model_type, TextgenLSTMConfig)
AutoModelForCausalLM.register(TextgenLSTMConfig, TextgenLSTMForCausalLM)
