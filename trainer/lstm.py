"""Build the LSTM baseline (the model class lives in repl/architectures/lstm.py so the REPL can
load it without importing the trainer)."""

from __future__ import annotations

from typing import Any

from repl.architectures.lstm import TextgenLSTMConfig, TextgenLSTMForCausalLM

# From scratch an LSTM wants a much larger step than a fine-tune; 5e-5 would barely move it.
DEFAULT_LSTM_LR = 2e-3


def build_lstm(tokenizer: Any, hidden_size: int = 512, num_layers: int = 2,
               dropout: float = 0.1) -> TextgenLSTMForCausalLM:
    """A randomly initialised word-piece LSTM LM over `tokenizer`'s vocabulary."""
    config = TextgenLSTMConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_layers=num_layers,
        dropout=dropout,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = TextgenLSTMForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
