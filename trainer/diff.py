"""What fine-tuning changed: the same text teacher-forced through two models, token by token.

Each document is tokenized once (both models must share the tokenizer), preceded by the start
token (BOS, else EOS: what separates documents in training), so every one of its tokens is
predicted. Long documents are scored with a sliding window (each token once, with at least half
a window of context after the first window). For every token we keep log p under the base and
under the tuned model; the delta (tuned - base, nats) is what fine-tuning gained (> 0) or lost.

Per document: tokens, perplexity under each model. Over all: the same, plus the token types
that gained and lost most (summed delta over their occurrences, with counts and mean), and the
single positions that moved most, with their context.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from repl.errors import TextgenError
from repl.logprob_delta import DELTA_BANDS, delta_band


def band(delta: float) -> str:
    """The terminal style of a delta (tuned - base log p, nats): F2's green / red."""
    return DELTA_BANDS[delta_band(delta)][1]


@dataclass
class DocumentDiff:
    name: str
    text: str
    token_ids: list[int]
    spans: list[tuple[int, int]]  # character span of each token in `text`
    base: np.ndarray  # log p of each token, base model
    tuned: np.ndarray

    @property
    def delta(self) -> np.ndarray:
        return self.tuned - self.base

    def perplexities(self) -> tuple[float, float]:
        return _ppl(-self.base.mean()), _ppl(-self.tuned.mean())


@dataclass
class DiffResult:
    base_name: str
    tuned_name: str
    documents: list[DocumentDiff] = field(default_factory=list)
    tokenizer: Any = None
    window: int = 0

    @property
    def tokens(self) -> int:
        return sum(len(d.token_ids) for d in self.documents)

    def overall(self) -> tuple[float, float]:
        base = np.concatenate([d.base for d in self.documents])
        tuned = np.concatenate([d.tuned for d in self.documents])
        return _ppl(-base.mean()), _ppl(-tuned.mean())

    def token_table(self, top: int = 15, min_count: int = 2) -> tuple[list[dict], list[dict]]:
        """(gained most, lost most): token types by summed delta over their occurrences."""
        total: dict[int, float] = defaultdict(float)
        count: dict[int, int] = defaultdict(int)
        for doc in self.documents:
            for token, delta in zip(doc.token_ids, doc.delta.tolist(), strict=True):
                total[token] += delta
                count[token] += 1
        rows = [{"token": self.show(token), "token_id": token, "count": count[token],
                 "total_delta": round(total[token], 4),
                 "mean_delta": round(total[token] / count[token], 4)}
                for token in total if count[token] >= min_count]
        rows.sort(key=lambda r: r["total_delta"])
        gained = [r for r in reversed(rows) if r["total_delta"] > 0][:top]
        lost = [r for r in rows if r["total_delta"] < 0][:top]
        return gained, lost

    def top_positions(self, top: int = 10) -> tuple[list[dict], list[dict]]:
        """(gained most, lost most): single tokens in context."""
        moves = []
        for doc in self.documents:
            for i, delta in enumerate(doc.delta.tolist()):
                start, end = doc.spans[i]
                moves.append({"document": doc.name, "token": self.show(doc.token_ids[i]),
                              "delta": round(delta, 4),
                              "base_p": round(math.exp(doc.base[i]), 4),
                              "tuned_p": round(math.exp(doc.tuned[i]), 4),
                              "context": _context(doc.text, start, end)})
        moves.sort(key=lambda m: m["delta"])
        return list(reversed(moves[-top:])), moves[:top]

    def show(self, token_id: int) -> str:
        from repl.token_probs import token_text

        return token_text(self.tokenizer, token_id)

    def to_dict(self, max_pieces: int = 2000) -> dict[str, Any]:
        """JSON for the TUI and for scripts; each document's text as (piece, delta) pairs."""
        base, tuned = self.overall()
        gained, lost = self.token_table()
        gained_at, lost_at = self.top_positions()
        docs = []
        budget = max_pieces
        for doc in self.documents:
            b, t = doc.perplexities()
            pieces = [[doc.text[s:e], round(d, 4)]
                      for (s, e), d in zip(doc.spans, doc.delta.tolist(), strict=True)]
            docs.append({"name": doc.name, "tokens": len(doc.token_ids),
                         "base_perplexity": round(b, 4), "tuned_perplexity": round(t, 4),
                         "pieces": pieces[:max(0, budget)]})
            budget -= len(pieces)
        return {"base": self.base_name, "tuned": self.tuned_name, "tokens": self.tokens,
                "window": self.window,
                "base_perplexity": round(base, 4), "tuned_perplexity": round(tuned, 4),
                "documents": docs, "gained": gained, "lost": lost,
                "gained_positions": gained_at, "lost_positions": lost_at}


def _ppl(nll: float) -> float:
    return math.exp(min(float(nll), 50.0))


def _context(text: str, start: int, end: int, width: int = 30) -> str:
    before = text[max(0, start - width):start].replace("\n", " ")
    after = text[end:end + width].replace("\n", " ")
    return f"{before}[{text[start:end]}]{after}"


# ---------------------------------------------------------------- scoring

def token_logprobs(model: Any, ids: Sequence[int], window: int) -> np.ndarray:
    """log p(ids[i] | ids[:i]) for i >= 1, with a sliding window of `window` tokens."""
    import torch

    device = next(model.parameters()).device
    tensor = torch.as_tensor(list(ids), dtype=torch.long)
    total = len(tensor)
    out = np.zeros(total - 1, dtype=np.float64)
    stride = max(1, window // 2)
    first, end = 1, min(window, total)
    with torch.inference_mode():
        while first < total:
            begin = max(0, end - window)
            chunk = tensor[begin:end].unsqueeze(0).to(device)
            logits = model(input_ids=chunk).logits[0].float()
            logp = torch.log_softmax(logits[:-1], dim=-1)
            targets = chunk[0, 1:]
            picked = logp.gather(1, targets.unsqueeze(1)).squeeze(1).cpu().numpy()
            # picked[j] scores chunk token j+1 = stream token begin+j+1; keep the new ones.
            out[first - 1:end - 1] = picked[first - begin - 1:]
            first, end = end, min(end + stride, total)
    return out


def document_tokens(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of `text` and each one's character span; the spans cover the text."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    spans = []
    previous = 0
    for _, end in encoded["offset_mapping"]:
        end = max(previous, end)
        spans.append((previous, end))
        previous = end
    if spans:
        spans[-1] = (spans[-1][0], len(text))
    return ids, spans


def diff_models(base: Any, tuned: Any, documents: Sequence[tuple[str, str]],
                max_tokens: int | None = 4000, window: int | None = None,
                base_name: str = "base", tuned_name: str = "tuned") -> DiffResult:
    """Teacher-force each (name, text) through both loaded models (repl.models.LoadedModel)."""
    from repl.models import context_length

    tokenizer = base.tokenizer
    context = min(c for c in (context_length(base.model.config),
                              context_length(tuned.model.config), 1024) if c)
    window = min(window or 512, context)
    if window < 2:
        raise TextgenError(f"--window {window}: use at least 2 tokens.")
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None \
        else tokenizer.eos_token_id
    result = DiffResult(base_name, tuned_name, tokenizer=tokenizer, window=window)
    budget = max_tokens
    for name, text in documents:
        if budget is not None and budget <= 0:
            break
        if budget is not None and len(text) > budget * 8:
            text = text[: budget * 8]  # no need to tokenize what will not be scored
        ids, spans = document_tokens(tokenizer, text)
        if ids != document_tokens(tuned.tokenizer, text)[0]:
            raise TextgenError(f"{base_name} and {tuned_name} tokenize the text differently; "
                               "diff compares models that share a tokenizer.")
        if budget is not None and len(ids) > budget:
            ids, spans = ids[:budget], spans[:budget]
            text = text[: spans[-1][1]]
        if not ids:
            continue
        stream = ([start] if start is not None else []) + ids
        base_lp, tuned_lp = (token_logprobs(m.model, stream, window)
                             for m in (base, tuned))
        if start is None:  # nothing before the first token: it is not scored
            ids, spans = ids[1:], spans[1:]
        result.documents.append(DocumentDiff(name, text, ids, spans, base_lp, tuned_lp))
        if budget is not None:
            budget -= len(ids)
    if not result.documents or result.tokens == 0:
        raise TextgenError("no text to score: the documents are empty.")
    return result


# ---------------------------------------------------------------- output

def coloured_text(doc: DocumentDiff, limit: int | None = None) -> Any:
    """The document as a rich Text, each token coloured by its delta band."""
    from rich.text import Text

    text = Text()
    for i, ((start, end), delta) in enumerate(zip(doc.spans, doc.delta.tolist(),
                                                  strict=True)):
        if limit is not None and i >= limit:
            text.append(" …")
            break
        text.append(doc.text[start:end], style=band(delta) or None)
    return text


def legend() -> Any:
    from rich.text import Text

    text = Text("Δ log p (tuned - base): ")
    for _, style, _, label in DELTA_BANDS:
        text.append("■ " if style else "□ ", style=style or None)
        text.append(f"{label}  ")
    return text


def print_report(result: DiffResult, console: Any = None, show_tokens: int = 300,
                 top: int = 15) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    console.print(legend())
    shown = 0
    for doc in result.documents:
        if shown >= show_tokens:
            break
        b, t = doc.perplexities()
        console.rule(Text(f"{doc.name} · {len(doc.token_ids)} tokens · perplexity "
                          f"{b:.2f} -> {t:.2f}"))
        console.print(coloured_text(doc, limit=show_tokens - shown))
        shown += len(doc.token_ids)
    docs = Table(title="perplexity per document (teacher-forced, each token scored once)")
    for column in ("document", "tokens", result.base_name, result.tuned_name, "change"):
        docs.add_column(column, justify="left" if column == "document" else "right")
    for doc in result.documents:
        b, t = doc.perplexities()
        docs.add_row(Text(doc.name), str(len(doc.token_ids)), f"{b:.2f}", f"{t:.2f}",
                     f"{(t / b - 1) * 100:+.1f}%")
    b, t = result.overall()
    docs.add_row("all", str(result.tokens), f"{b:.2f}", f"{t:.2f}", f"{(t / b - 1) * 100:+.1f}%",
                 style="bold")
    console.print(docs)
    gained, lost = result.token_table(top)
    for title, rows, style in (("tokens that gained most", gained, "green"),
                               ("tokens that lost most", lost, "red")):
        table = Table(title=f"{title} (summed Δ log p over their occurrences, nats)")
        for column in ("token", "count", "total Δ", "mean Δ"):
            table.add_column(column, justify="left" if column == "token" else "right")
        for row in rows:
            table.add_row(Text(row["token"], style=style), str(row["count"]),
                          f"{row['total_delta']:+.2f}", f"{row['mean_delta']:+.3f}")
        console.print(table)


def write_html(result: DiffResult, path: Path) -> None:
    """A self-contained page: every token shaded by its delta (hover: both probabilities), the
    perplexity table and the token tables."""
    from repl.session import write_atomically

    def shade(delta: float) -> str:
        alpha = min(abs(delta) / 3.0, 1.0) * 0.85
        rgb = "46,160,67" if delta > 0 else "218,54,51"
        return f"background:rgba({rgb},{alpha:.3f})"

    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>what fine-tuning changed: {esc(result.tuned_name)}</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em}",
        ".doc{font-family:ui-monospace,monospace;white-space:pre-wrap;line-height:1.6;"
        "border:1px solid #ccc;padding:1em;border-radius:6px}",
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:2px 8px;text-align:right}td:first-child,th:first-child{text-align:left}",
        ".g{color:#1a7f37}.l{color:#cf222e}</style></head><body>",
        f"<h1>What fine-tuning changed</h1><p>base <code>{esc(result.base_name)}</code>, tuned "
        f"<code>{esc(result.tuned_name)}</code>; {result.tokens:,} tokens teacher-forced "
        f"(window {result.window}). Each token is shaded by Δ log p = log p(tuned) - log "
        "p(base): <span style='background:rgba(46,160,67,.6)'>gained</span>, "
        "<span style='background:rgba(218,54,51,.6)'>lost</span>; hover for both "
        "probabilities.</p>",
        "<table><tr><th>document</th><th>tokens</th><th>base ppl</th><th>tuned ppl</th>"
        "<th>change</th></tr>",
    ]
    for doc in result.documents:
        b, t = doc.perplexities()
        parts.append(f"<tr><td>{esc(doc.name)}</td><td>{len(doc.token_ids)}</td>"
                     f"<td>{b:.2f}</td><td>{t:.2f}</td><td>{(t / b - 1) * 100:+.1f}%</td></tr>")
    b, t = result.overall()
    parts.append(f"<tr><th>all</th><th>{result.tokens}</th><th>{b:.2f}</th><th>{t:.2f}</th>"
                 f"<th>{(t / b - 1) * 100:+.1f}%</th></tr></table>")
    gained, lost = result.token_table()
    for title, rows, cls in (("Tokens that gained most", gained, "g"),
                             ("Tokens that lost most", lost, "l")):
        parts.append(f"<h2>{title}</h2><table><tr><th>token</th><th>count</th>"
                     "<th>total Δ</th><th>mean Δ</th></tr>")
        parts += [f"<tr><td class='{cls}'><code>{esc(r['token'])}</code></td>"
                  f"<td>{r['count']}</td><td>{r['total_delta']:+.2f}</td>"
                  f"<td>{r['mean_delta']:+.3f}</td></tr>" for r in rows]
        parts.append("</table>")
    for doc in result.documents:
        b, t = doc.perplexities()
        parts.append(f"<h2>{esc(doc.name)}</h2><p>perplexity {b:.2f} → {t:.2f}</p>"
                     "<div class='doc'>")
        for (start, end), base_lp, tuned_lp in zip(doc.spans, doc.base.tolist(),
                                                   doc.tuned.tolist(), strict=True):
            delta = tuned_lp - base_lp
            title = (f"base p={math.exp(base_lp):.4f} tuned p={math.exp(tuned_lp):.4f} "
                     f"Δ={delta:+.3f}")
            parts.append(f"<span style='{shade(delta)}' title='{esc(title)}'>"
                         f"{esc(doc.text[start:end])}</span>")
        parts.append("</div>")
    parts.append("</body></html>\n")
    write_atomically(path, "".join(parts).encode("utf-8"))
