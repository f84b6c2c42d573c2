"""textgen-train: fine-tune causal language models and evaluate their perplexity."""
