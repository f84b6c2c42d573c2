"""The language-model head and its cross-entropy in one step, for bf16 training on CPU.

With GPT-2's 50,257-token vocabulary the head is most of a small model's work, and on a CPU
the cost is not the multiply (bf16 matmuls run on AMX at ~1 TFLOP/s) but the passes over the
(tokens x vocabulary) logits: autocast writes them in bf16, the loss copies them to fp32, then
log-softmax, its backward and the casts each read and write the whole tensor again.
`linear_cross_entropy` computes the loss and both gradients while the logits of a chunk of
rows are at hand (as Liger-Kernel's fused linear cross-entropy does on GPUs): matmuls in bf16,
softmax and the loss in fp32, and no logits kept for backward. It is the same loss as
transformers' `ForCausalLMLoss` (shifted labels, -100 ignored, summed then divided by
`num_items_in_batch` when given, else by the tokens that count).
"""

from __future__ import annotations

import functools
from typing import Any

# Rows of logits per chunk: 1024 x 50,257 fp32 is 200 MB, the most a chunk holds at once. CPU
# blocks (batch 4-8 x 64-128 tokens) are one chunk; smaller chunks measured slower here.
CHUNK_ROWS = 1024
IGNORE = -100
# Causal LMs whose logits are exactly `lm_head(base_model(...).last_hidden_state)`: no logit
# scaling or soft-capping (Gemma, Cohere, Granite have those and keep the model's own loss).
PLAIN_HEAD_TYPES = frozenset({"gpt2", "llama", "mistral", "qwen2", "qwen3"})


def supports_fused_loss(model: Any) -> bool:
    """Whether `model`'s logits are a plain bias-free linear head over its base model."""
    import torch

    config = getattr(model, "config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return (getattr(config, "model_type", None) in PLAIN_HEAD_TYPES
            and isinstance(head, torch.nn.Linear) and head.bias is None
            and getattr(model, "base_model", model) is not model)


def causal_lm_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None,
                   dtype: Any = None) -> Any:
    """The model's causal-LM loss on `inputs` (with `labels`), the head fused with the loss."""
    import torch

    dtype = dtype or torch.bfloat16
    labels = inputs["labels"]
    body = {k: v for k, v in inputs.items() if k not in ("labels", "num_items_in_batch")}
    hidden = model.base_model(**body, use_cache=False).last_hidden_state
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = labels[:, 1:].reshape(-1).to(hidden.device)
    divisor = num_items_in_batch if num_items_in_batch is not None else \
        (targets != IGNORE).sum().clamp(min=1)
    weight = model.get_output_embeddings().weight
    return linear_cross_entropy(hidden, weight, targets, divisor, dtype)


def linear_cross_entropy(hidden: Any, weight: Any, targets: Any, divisor: Any,
                         dtype: Any) -> Any:
    """sum over rows of -log softmax(hidden @ weight.T)[target] / divisor; rows whose target is
    -100 count for nothing. Differentiable in `hidden` and `weight`."""
    import torch

    divisor = torch.as_tensor(divisor, dtype=torch.float32, device=hidden.device)
    return _function().apply(hidden, weight, targets, divisor, dtype)


@functools.cache
def _function() -> Any:
    """The autograd Function, built on first use so that importing this module needs no torch
    (the CLI's --help and the TUI import the trainer's modules)."""
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, targets: Any, divisor: Any,
                    dtype: Any) -> Any:
            # The dtypes here are chosen, not left to an enclosing autocast.
            with torch.autocast(hidden.device.type, enabled=False):
                return _forward(ctx, hidden, weight, targets, divisor, dtype)

        @staticmethod
        def backward(ctx: Any, grad_output: Any) -> Any:
            grad_hidden, grad_weight = ctx.saved_tensors
            # Both were scaled by 1/divisor in forward; grad_output is 1 unless the caller
            # scaled the loss again (a 12.9M-element multiply saved on every step).
            if grad_output.item() != 1.0:
                grad_hidden, grad_weight = grad_hidden * grad_output, grad_weight * grad_output
            return (grad_hidden.to(ctx.hidden_dtype),
                    grad_weight.to(ctx.weight_dtype) if grad_weight is not None else None,
                    None, None, None)

    return LinearCrossEntropy


def _forward(ctx: Any, hidden: Any, weight: Any, targets: Any, divisor: Any, dtype: Any) -> Any:
    import torch

    # (Inside forward grad mode is off; autograd says here what backward will want.)
    need_grad = any(ctx.needs_input_grad[:2])
    w = weight.detach().to(dtype)
    h = hidden.detach().to(dtype)
    valid = targets != IGNORE
    safe = targets.clamp(min=0)
    # Folding 1/divisor (and the ignored rows' zero) into these small tensors scales the
    # gradient without another pass over the logits.
    row_scale = (valid.to(torch.float32) / divisor).to(dtype)[:, None]
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(h) if need_grad else None
    grad_weight = None
    for start in range(0, h.shape[0], CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        chunk, target = h[rows], safe[rows][:, None]
        logp = torch.log_softmax((chunk @ w.t()).float(), dim=-1)
        total -= (logp.gather(1, target).squeeze(1) * valid[rows]).sum()
        if not need_grad:
            continue
        # d(-log p_t)/d logits = softmax - onehot(t), computed in place on the fp32 buffer.
        probs = logp.exp_()
        probs.scatter_add_(1, target, torch.full_like(target, -1, dtype=probs.dtype))
        grad = probs.to(dtype)
        del logp, probs
        grad_hidden[rows] = (grad @ w) * row_scale[rows]
        part = grad.t() @ (chunk * row_scale[rows])
        grad_weight = part.float() if grad_weight is None else grad_weight.add_(part)
    if need_grad:
        ctx.save_for_backward(grad_hidden, grad_weight if ctx.needs_input_grad[1] else None)
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
    return total / divisor
