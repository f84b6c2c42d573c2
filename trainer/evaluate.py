"""Perplexity with a sliding window, and simple measures of sampled text.

Two layouts of the text (`--layout`):

- `articles` (default): the split's documents are tokenized as for training (EOS between
  documents, blank WikiText lines dropped) into one stream. The first window scores its tokens;
  each next window ends `stride` tokens further on, reads the `window` tokens up to there and
  scores only the `stride` new ones. Every token after the first is scored exactly once, with
  at least `window - stride` tokens of context after the first window.
- `hf-guide`: exactly the Hugging Face perplexity guide ("Perplexity of fixed-length models"):
  the rows joined with blank lines ("\n\n".join), tokenized as one string, windows starting
  every `stride` tokens, each window's mean loss weighted by its target count minus one. Use it
  to compare with figures published that way; on WikiText-2 the two differ by about 1%.

The same code scores the transformers and the LSTM baseline, so they compare like for like.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from repl.errors import TextgenError

LAYOUTS = ("articles", "hf-guide")


@dataclass
class PerplexityResult:
    perplexity: float
    mean_nll: float
    tokens_scored: int
    window: int
    stride: int
    windows: int
    seconds: float
    layout: str = "articles"

    def method(self) -> str:
        if self.layout == "hf-guide":
            return (f"layout hf-guide: rows joined with blank lines, tokenized as one string; "
                    f"the Hugging Face perplexity guide's loop: windows of {self.window} tokens "
                    f"starting every {self.stride}, each scoring the tokens after the previous "
                    f"window ({self.windows} windows, {self.tokens_scored:,} tokens counted)")
        return (f"layout articles: documents joined with EOS, blank lines dropped; "
                f"sliding window: {self.tokens_scored:,} tokens scored, window {self.window}, "
                f"stride {self.stride} ({self.windows} windows; each token predicted once, with "
                f"up to {self.window - 1} tokens of context and at least "
                f"{self.window - self.stride} after the first window)")


@dataclass
class SampleQuality:
    samples: list[dict[str, str]] = field(default_factory=list)
    distinct_1: float = 0.0
    distinct_2: float = 0.0
    repetition_rate: float = 0.0
    sampling: str = ""

    def method(self) -> str:
        return (f"{self.sampling}; words split on whitespace; distinct-n = unique n-grams / all "
                "n-grams over all continuations; repetition rate = share of word 4-grams that "
                "repeat an earlier 4-gram of the same continuation, averaged")


def sliding_window_nll(model: Any, ids: np.ndarray | Sequence[int], window: int, stride: int,
                       progress: bool = True) -> tuple[float, int, int]:
    """(sum of negative log-likelihoods in nats, tokens scored, windows) over the stream `ids`."""
    import torch
    import tqdm

    if window < 2:
        raise TextgenError(f"--window {window}: use at least 2 tokens.")
    if not 1 <= stride < window:
        raise TextgenError(f"--stride {stride}: use a value from 1 to {window - 1} (below the "
                           "window, so every scored token has a token before it in its window).")
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    total = len(ids)
    if total < 2:
        raise TextgenError("the text is too short to score: it needs at least 2 tokens.")
    device = next(model.parameters()).device
    nll_sum, scored, windows = 0.0, 0, 0
    bar = tqdm.tqdm(total=total - 1, desc="scoring", unit="tok", disable=not progress,
                    dynamic_ncols=True)
    # The first window scores its tokens 1..end-1; each later one ends `stride` tokens further
    # on, reads the `window` tokens up to there and scores only the new ones.
    first, end = 1, min(window, total)
    with torch.inference_mode():
        while first < total:
            begin = max(0, end - window)
            chunk = ids[begin:end].unsqueeze(0).to(device)
            logits = model(input_ids=chunk).logits[0].float()
            # logits[i] predicts chunk[i + 1]: global targets first..end-1
            predictors = logits[first - 1 - begin:end - 1 - begin]
            targets = ids[first:end].to(device)
            nll_sum += torch.nn.functional.cross_entropy(predictors, targets,
                                                         reduction="sum").item()
            scored += end - first
            windows += 1
            bar.update(end - first)
            first, end = end, min(end + stride, total)
    bar.close()
    return nll_sum, scored, windows


def hf_guide_nll(model: Any, ids: np.ndarray | Sequence[int], max_length: int, stride: int,
                 progress: bool = True) -> tuple[float, int, int]:
    """The Hugging Face perplexity guide's loop, step for step (its arithmetic too: a float32
    running sum of each window's mean loss times its target count minus one)."""
    import torch
    import tqdm

    if max_length < 2 or not 1 <= stride <= max_length:
        raise TextgenError(f"--window {max_length} / --stride {stride}: the guide's loop needs "
                           "a window of at least 2 and a stride from 1 to the window.")
    input_all = torch.as_tensor(np.asarray(ids, dtype=np.int64)).unsqueeze(0)
    seq_len = input_all.size(1)
    if seq_len < 2:
        raise TextgenError("the text is too short to score: it needs at least 2 tokens.")
    device = next(model.parameters()).device
    nll_sum, n_tokens, prev_end_loc, windows = 0.0, 0, 0, 0
    with torch.inference_mode():
        for begin_loc in tqdm.tqdm(range(0, seq_len, stride), desc="scoring", unit="window",
                                   disable=not progress, dynamic_ncols=True):
            end_loc = min(begin_loc + max_length, seq_len)
            trg_len = end_loc - prev_end_loc  # may differ from stride on the last loop
            input_ids = input_all[:, begin_loc:end_loc].to(device)
            target_ids = input_ids.clone()
            target_ids[:, :-trg_len] = -100
            neg_log_likelihood = model(input_ids, labels=target_ids).loss
            num_valid_tokens = (target_ids != -100).sum().item()
            num_loss_tokens = num_valid_tokens - target_ids.size(0)  # the label shift
            nll_sum += neg_log_likelihood * num_loss_tokens
            n_tokens += num_loss_tokens
            windows += 1
            prev_end_loc = end_loc
            if end_loc == seq_len:
                break
    return float(nll_sum), n_tokens, windows


def perplexity(model: Any, ids: np.ndarray | Sequence[int], window: int, stride: int,
               progress: bool = True, layout: str = "articles") -> PerplexityResult:
    started = time.perf_counter()
    score = hf_guide_nll if layout == "hf-guide" else sliding_window_nll
    nll_sum, scored, windows = score(model, ids, window, stride, progress)
    mean = nll_sum / scored
    return PerplexityResult(perplexity=math.exp(min(mean, 700.0)), mean_nll=mean,
                            tokens_scored=scored, window=window, stride=stride, windows=windows,
                            seconds=round(time.perf_counter() - started, 2), layout=layout)


def words(text: str) -> list[str]:
    return text.split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / all n-grams, pooled over `texts` (0 when there are none)."""
    grams = [g for text in texts for g in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(texts: Sequence[str], n: int = 4) -> float:
    """Mean over texts of the share of n-grams that repeat an earlier one in the same text."""
    rates = []
    for text in texts:
        grams = ngrams(words(text), n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else 0.0


def sample_quality(loaded: Any, documents: Sequence[str], count: int = 4, prompt_words: int = 12,
                   new_tokens: int = 48, seed: int = 0) -> SampleQuality:
    """Continue the opening words of `count` documents (spread over the split) and measure the
    continuations. Sampling uses textgen's default parameters with fixed seeds."""
    from repl.engine import GenerationRequest, Generator
    from repl.params import SamplingParams

    candidates = [d for d in documents if len(words(d)) > prompt_words]
    if not candidates or count < 1:
        return SampleQuality()
    step = max(1, len(candidates) // count)
    generator = Generator(loaded)
    base = SamplingParams(max_new_tokens=new_tokens)
    result = SampleQuality(sampling=(
        f"{new_tokens} new tokens after the first {prompt_words} words of a document, sampled "
        f"with temperature {base.temperature}, top-k {base.top_k}, top-p {base.top_p}, "
        f"repetition penalty {base.repetition_penalty}, seeds {seed}.."))
    for index, doc in enumerate(candidates[::step][:count]):
        prompt = " ".join(words(doc)[:prompt_words])
        params = base.replace(seed=seed + index)
        text, _ = generator.generate(GenerationRequest(prompt, params))
        result.samples.append({"prompt": prompt, "continuation": text})
    result.sampling += str(seed + len(result.samples) - 1)
    texts = [s["continuation"] for s in result.samples]
    result.distinct_1 = distinct_n(texts, 1)
    result.distinct_2 = distinct_n(texts, 2)
    result.repetition_rate = repetition_rate(texts, 4)
    return result


@dataclass
class EvalReport:
    model: str
    model_name: str
    data: str
    split: str
    total_tokens: int
    perplexity: PerplexityResult
    quality: SampleQuality | None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["perplexity"]["method"] = self.perplexity.method()
        if self.quality is not None:
            out["quality"]["method"] = self.quality.method()
        return out

    def text(self) -> str:
        p = self.perplexity
        lines = [
            f"{self.model_name} on {self.data}, split {self.split}, layout {p.layout}",
            f"perplexity {p.perplexity:.3f} (mean NLL {p.mean_nll:.4f} nats/token) in "
            f"{p.seconds:.1f} s",
            f"method: {p.method()}",
        ]
        if self.total_tokens > p.tokens_scored + 1:
            lines.append(f"subset: the first {p.tokens_scored + 1:,} of {self.total_tokens:,} "
                         "tokens of the split (--max-tokens)")
        if self.quality is not None and self.quality.samples:
            q = self.quality
            lines.append(f"samples: {len(q.samples)} continuations · distinct-1 "
                         f"{q.distinct_1:.3f} · distinct-2 {q.distinct_2:.3f} · repetition "
                         f"rate {q.repetition_rate:.3f}")
            lines.append(f"  ({q.method()})")
            for s in q.samples:
                lines.append(f"  > {s['prompt']} | {' '.join(s['continuation'].split())}")
        return "\n".join(lines)


def evaluate(spec: str, documents: Sequence[str], data_name: str, split: str,
             window: int | None = None, stride: int | None = None, max_tokens: int | None = None,
             samples: int = 4, cache_dir: Any = None, progress: bool = True,
             loaded: Any = None, layout: str = "articles",
             rows: Sequence[str] | None = None) -> EvalReport:
    """Load `spec` (unless `loaded` is given) and score `documents` (layout articles) or `rows`
    (layout hf-guide; default: the documents); sample `samples` texts."""
    from repl.models import context_length, load_model
    from trainer.data import tokenize_documents

    if layout not in LAYOUTS:
        raise TextgenError(f"--layout {layout}: use one of {', '.join(LAYOUTS)}.")
    loaded = loaded or load_model(spec)
    context = context_length(loaded.model.config)
    guide = layout == "hf-guide"
    window = window or min(context or 512, 1024 if guide else 512)
    if context is not None and window > context:
        raise TextgenError(f"--window {window} is larger than the model's context of {context} "
                           "tokens.")
    stride = stride or (min(512, max(1, window // 2)) if guide else max(1, window // 2))
    if guide:  # the guide's text: one string, rows joined with blank lines, one tokenization
        text = "\n\n".join(rows if rows is not None else documents)
        ids = np.asarray(loaded.tokenizer(text).input_ids, dtype=np.int64)
    else:
        ids = tokenize_documents(documents, loaded.tokenizer, cache_dir, f"Tokenizing {split}")
    total = len(ids)
    if max_tokens is not None:
        if max_tokens < 2:
            raise TextgenError(f"--max-tokens {max_tokens}: use at least 2.")
        ids = ids[:max_tokens]
    result = perplexity(loaded.model, ids, window, stride, progress, layout)
    quality = sample_quality(loaded, documents, count=samples) if samples > 0 else None
    return EvalReport(model=spec, model_name=loaded.info.name, data=data_name, split=split,
                      total_tokens=total, perplexity=result, quality=quality)
