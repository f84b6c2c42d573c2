"""The GPU check, one prepared run for a lent CUDA machine (`PYTHONPATH=. python
benchmarks/gpu_check.py`): GPT-2-small-shaped random weights, batch 1, bf16.

Prints decode tokens/s of eager `generate()` against the transformers backend's GPU path
(a static KV cache, which `generate()` compiles), in the same run, and the tokens/s of one
bf16 training step of the same model. Needs no tokenizer, data or network.
"""

from __future__ import annotations

import statistics
import sys
import time


def decode_rate(model, torch, new_tokens: int, **kwargs) -> float:
    input_ids = torch.randint(0, 50257, (1, 10), device="cuda")
    torch.cuda.synchronize()
    started = time.perf_counter()
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         pad_token_id=0, **kwargs)
    torch.cuda.synchronize()
    return (out.shape[1] - input_ids.shape[1]) / (time.perf_counter() - started)


def main() -> int:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if not torch.cuda.is_available():
        print("no CUDA device: this check is for a lent GPU machine")
        return 2
    torch.manual_seed(0)
    config = GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024)
    model = GPT2LMHeadModel(config).to("cuda", torch.bfloat16).eval()
    rows = {}
    for label, kwargs in [("eager generate()", {}),
                          ("static cache + compile", {"cache_implementation": "static"})]:
        for _ in range(2):  # warm-up: compilation, CUDA graphs
            decode_rate(model, torch, 64, **kwargs)
        rows[label] = statistics.median(decode_rate(model, torch, 256, **kwargs)
                                        for _ in range(3))
    base = rows["eager generate()"]
    print("| path | decode tok/s | x eager |\n|---|---:|---:|")
    for label, rate in rows.items():
        print(f"| {label} | {rate:.0f} | {rate / base:.2f} |")

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batch = torch.randint(0, 50257, (8, 1024), device="cuda")
    for step in range(3):
        torch.cuda.synchronize()
        started = time.perf_counter()
        loss = model(batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        tokens = batch.numel()
        flops = 6 * sum(p.numel() for p in model.parameters()) * tokens
        print(f"train step {step}: loss {loss.item():.3f}, {tokens / seconds:,.0f} tok/s, "
              f"{flops / seconds / 1e12:.1f} TFLOP/s (6ND)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
