"""A port of the authors' AttnLRP code (``lxt`` 2.1: ``lxt/efficient/rules.py``, ``patches.py``), applied the lxt way.

lxt monkey-patches the classes of a modeling module: ``nn.LayerNorm.forward`` becomes
``layer_norm_forward`` (the std behind ``stop_gradient``), the activation's forward goes through
``identity_rule_implicit``, and every attention function is wrapped by ``wrap_attention_forward``
(``divide_gradient`` on query, key and value) or, for CP-LRP, ``cp_wrap_attention_forward``
(``stop_gradient`` on query and key). Here the same functions patch one model's *instances* (and
its modeling module's ``eager_attention_forward``, under ``mock.patch``), so nothing outlives the
``with``. The attention function itself is HF's eager one written out, so that the scores and
probabilities of every layer can be kept (for the conservation accounting). Shares no code with
the package.

Verified once against the real lxt 2.1 (PyPI, transformers 4.57.6, HF ``ViTForImageClassification``
and ``ViTModel`` patched with lxt's own functions): see the report of the AttnLRP baseline.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager
from types import MethodType
from unittest import mock

import torch
from torch import nn
from torch.autograd import Function

# ------------------------------------------------------------------ lxt/efficient/rules.py, ported


class identity_rule_implicit_fn(Function):
    """Identity rule (Eq. 9): forward ``fn(x)``, backward ``g * fn(x) / (x + eps)``."""

    @staticmethod
    def forward(ctx, fn, input, epsilon=1e-10):
        output = fn(input)
        if input.requires_grad:
            ctx.save_for_backward(output / (input + epsilon))
        return output

    @staticmethod
    def backward(ctx, *out_relevance):
        return None, ctx.saved_tensors[0] * out_relevance[0], None


class divide_gradient_fn(Function):
    """Uniform rule (Eq. 7): identity forward, gradient divided by ``factor``."""

    @staticmethod
    def forward(ctx, input, factor=2):
        ctx.factor = factor
        return input

    @staticmethod
    def backward(ctx, *out_relevance):
        return out_relevance[0] / ctx.factor, None


def identity_rule_implicit(fn, input):
    return identity_rule_implicit_fn.apply(fn, input)


def divide_gradient(input, factor=2):
    return divide_gradient_fn.apply(input, factor)


def stop_gradient(input):
    return input.detach()


# ------------------------------------------------------------------ lxt/efficient/patches.py, ported


def layer_norm_forward(self, x):
    """lxt's LayerNorm: the identity rule on the normalisation, by stopping the gradient through the std."""
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    std = (var + self.eps).sqrt()
    y = (x - mean) / stop_gradient(std)
    if self.weight is not None:
        y *= self.weight
    if self.bias is not None:
        y += self.bias
    return y


def non_linear_forward(self, x):
    return identity_rule_implicit(self.original_forward, x)


def wrap_attention_forward(forward_fn):
    def attention_forward(module, query, key, value, *args, **kwargs):
        query = divide_gradient(query, 4)
        key = divide_gradient(key, 4)
        value = divide_gradient(value, 2)
        if "dropout" in kwargs:
            kwargs["dropout"] = 0.0
        return forward_fn(module, query, key, value, *args, **kwargs)

    return attention_forward


def cp_wrap_attention_forward(forward_fn):
    def cp_attention_forward(module, query, key, value, *args, **kwargs):
        query = stop_gradient(query)
        key = stop_gradient(key)
        if "dropout" in kwargs:
            kwargs["dropout"] = 0.0
        return forward_fn(module, query, key, value, *args, **kwargs)

    return cp_attention_forward


# ------------------------------------------------------------------ applied to one model


def recording_eager_attention(kept):
    """HF's ``eager_attention_forward`` written out; appends each layer's ``(scores, probabilities)`` to ``kept``."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        scaling = query.size(-1) ** -0.5 if scaling is None else scaling
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask
        probabilities = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        kept.append((scores, probabilities))
        output = torch.matmul(probabilities, value).transpose(1, 2).contiguous()
        return output, probabilities

    return attention


def _activation_modules(model):
    return [m for m in model.modules() if type(m).__module__ == "transformers.activations" or isinstance(m, nn.GELU)]


@contextmanager
def lxt_patched(model, variant="attnlrp", kept=None):
    """``model`` (eager attention) with lxt's AttnLRP (``"attnlrp"``) or CP-LRP (``"cp"``) rules, for the ``with``.

    ``kept`` (a list) receives every layer's ``(scores, probabilities)`` during the forward.
    """
    wrap = {"attnlrp": wrap_attention_forward, "cp": cp_wrap_attention_forward}[variant]
    attention = wrap(recording_eager_attention([] if kept is None else kept))
    modeling = sys.modules[type(model).__module__]
    patched = []
    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(modeling, "eager_attention_forward", attention))
        try:
            for module in model.modules():
                if isinstance(module, nn.LayerNorm):
                    module.forward = MethodType(layer_norm_forward, module)
                    patched.append(module)
            for module in _activation_modules(model):
                module.original_forward = module.forward
                module.forward = MethodType(non_linear_forward, module)
                patched.append(module)
            yield model
        finally:
            for module in patched:
                vars(module).pop("forward", None)
                vars(module).pop("original_forward", None)


def _backbone(model):
    for name in ("vit", "deit", "dinov2", "dinov2_with_registers"):
        if hasattr(model, name):
            return getattr(model, name)
    return model


def explained_score(model, output, target):
    """The scalar the package explains: the target logit, or ``<e, e.detach()> / ||e||`` of the CLS embedding."""
    if target is not None:
        return output.logits.gather(1, target[:, None])[:, 0]
    embedding = output.last_hidden_state[:, 0]
    direction = embedding.detach()
    return (embedding * direction).sum(-1) / direction.norm(dim=-1)


def lxt_relevance(model, images, target=None, variant="attnlrp", with_terms=False, **forward_kwargs):
    """Token relevance `(batch, num_tokens)`: Gradient x Input at the embeddings' output, summed over hidden.

    With ``with_terms``, also the score ``S`` `(batch,)` and, summed over the batch, the relevance the
    biases absorb (``sum b * dS/db`` over every bias) and the softmax rule's absorbed part
    ``(sum(s * dS/ds) - sum(x * dS/dx)) / 2`` over all layers (``x``: scores, ``s``: probabilities).
    """
    tokens = []

    def leaf(_module, _args, output):
        first = output[0] if isinstance(output, tuple) else output  # ViT-MAE: (tokens, mask, ids_restore)
        first = first.detach().requires_grad_(True)
        tokens.append(first)
        return (first, *output[1:]) if isinstance(output, tuple) else first

    kept = []
    handle = _backbone(model).embeddings.register_forward_hook(leaf)
    try:
        with torch.enable_grad(), lxt_patched(model, variant, kept):
            score = explained_score(model, model(images, **forward_kwargs), target)
            biases = [p for name, p in model.named_parameters() if name.endswith("bias") and p.requires_grad]
            inner = [t for pair in kept for t in pair if t.requires_grad] if with_terms else []  # none under CP
            grads = torch.autograd.grad(score.sum(), [tokens[0], *biases, *inner], allow_unused=True)
    finally:
        handle.remove()
    relevance = (tokens[0] * grads[0]).sum(-1).detach()
    if not with_terms:
        return relevance
    bias_terms = sum(
        float((b.detach() * g).sum()) for b, g in zip(biases, grads[1 : 1 + len(biases)], strict=True) if g is not None
    )
    inner_grads = grads[1 + len(biases) :]
    softmax_terms = 0.0
    for index in range(0, len(inner), 2):
        scores, probabilities = inner[index], inner[index + 1]
        g_scores, g_probabilities = inner_grads[index], inner_grads[index + 1]
        # lxt halves the gradient of A v's operand A at q and k (wrap_attention_forward), downstream of the
        # softmax: the gradients seen at the probabilities and scores are twice their relevance's.
        softmax_terms += 0.5 * float(
            (probabilities.detach() * g_probabilities).sum() - (scores.detach() * g_scores).sum()
        )
    return relevance, score.detach(), bias_terms, softmax_terms
