"""An LLM wrapper in Captum's ``LLMAttribution`` interface: a continuation explained token by token."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from captum.attr import LLMAttributionResult, TextTokenInput
from torch import Tensor, nn

from .._core.propagation import FUSED_HEAD_MODES, check_head_fusion
from .._core.text_lrp import TextTokenRelevanceLRP
from .._core.token_lrp import HeadFusion
from ..rules import TokenRule


# ------------------------------------------------------------------ LLM wrapper
class TokenRelevanceLLMAttribution:
    """Token relevance of a prompt for each token of a continuation, in the shape of Captum's ``LLMAttribution``.

    The continuation (``target``, or the model's greedy continuation) is appended to the prompt and
    the model runs **once** over the whole sequence. For the ``t``-th target token the relevance starts,
    one-hot, at the position that predicts it (the token before it, ``num_prompt_tokens - 1 + t``) and
    is redistributed down to the input tokens; its part on the prompt tokens is ``token_attr[t]``.
    What the rules send to earlier target tokens is not in ``token_attr``, so row ``t`` sums to 1 less
    that share (row 0 sums to 1). ``seq_attr`` is the **sum** of the rows over the target tokens (as
    Captum's gradient ``LLMAttribution`` sums).

    Each row equals ``TextTokenRelevanceLRP(model, rule).token_relevance(ids, target=position)``
    restricted to the prompt (``ids`` the prompt and the continuation).

    Parameters
    ----------
    model : nn.Module
        A supported decoder (GPT-2, Llama, Qwen2, Gemma, Mistral): its causal-LM class
        (``GPT2LMHeadModel``, ``LlamaForCausalLM``) to generate the target, or any decoder with a given target.
    tokenizer : tokenizer
        The model's tokenizer: encodes the prompt (with its special tokens, e.g. BOS) and a target string
        (without), and names the tokens.
    rule : str or TokenRule, default "iv"
        The rule of every layer (see :class:`TextTokenRelevanceLRP`).
    max_chunk_elements : int, default 2**25
        As in :class:`TextTokenRelevanceLRP`.

    Examples
    --------
    >>> llm = TokenRelevanceLLMAttribution(model, tokenizer)                     # doctest: +SKIP
    >>> result = llm.attribute("The capital of France is", target=" Paris")     # doctest: +SKIP
    >>> figure, axes = result.plot_token_attr()                                 # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        rule: str | TokenRule = "iv",
        *,
        max_chunk_elements: int = 2**25,
    ) -> None:
        if tokenizer is None or not callable(getattr(tokenizer, "convert_ids_to_tokens", None)):
            raise TypeError(
                f"Expected the model's HuggingFace tokenizer (AutoTokenizer.from_pretrained(...)), got "
                f"{type(tokenizer).__name__}."
            )
        self.lrp = TextTokenRelevanceLRP(model, rule, tokenizer=tokenizer, max_chunk_elements=max_chunk_elements)
        adapter = self.lrp._adapter
        name = type(self.lrp.model).__name__
        if not adapter.is_decoder:
            raise TypeError(
                f"TokenRelevanceLLMAttribution explains generated text, which needs a decoder (GPT-2, Llama, Qwen2, "
                f"Gemma, Mistral); {name} is an encoder. Explain it with TextTokenRelevanceLRP(model)."
                "token_relevance(inputs) instead."
            )
        if adapter.is_classifier:
            raise TypeError(
                f"{name} is a sequence classifier: it predicts a class, not the next token. Use its causal-LM "
                "class (e.g. LlamaForCausalLM), or TextTokenRelevanceLRP for the classifier."
            )
        self.model = self.lrp.model
        self.tokenizer = tokenizer

    @property
    def rule(self) -> TokenRule:
        """The default rule of every layer."""
        return self.lrp.rule

    def attribute(
        self,
        inp: str | TextTokenInput,
        target: str | Tensor | None = None,
        *,
        max_new_tokens: int = 25,
        gen_args: dict[str, Any] | None = None,
        head_fusion: HeadFusion = "mean",
    ) -> LLMAttributionResult:
        """Relevance of every prompt token for every target token.

        Parameters
        ----------
        inp : str or captum.attr.TextTokenInput
            The prompt, tokenized with the tokenizer's special tokens (as Captum's ``TextTokenInput`` does);
            or a ``TextTokenInput``, whose ``skip_tokens`` are left out of the result's columns.
        target : str or Tensor, optional
            The continuation: a string (tokenized without special tokens) or token ids `(num_target_tokens,)`.
            None: the model's greedy continuation of ``max_new_tokens`` tokens (``generate``).
        max_new_tokens : int, default 25
            Length of the generated continuation (target None).
        gen_args : dict, optional
            Further ``generate`` arguments (target None), e.g. ``{"eos_token_id": ...}``; greedy by default.
        head_fusion : {"mean", "max", "min", "per_head_mean"}, default "mean"
            How heads are combined (one map per target token).

        Returns
        -------
        captum.attr.LLMAttributionResult
            ``token_attr`` `(num_target_tokens, num_prompt_tokens)`, ``seq_attr`` `(num_prompt_tokens,)` (the
            sum of the rows), ``input_tokens`` and ``output_tokens`` as token strings; and where this Captum
            has it, ``output_probs`` `(num_target_tokens,)`: the model's probability of each target token
            (from the same forward pass; a model with a language-model head).
        """
        if head_fusion not in FUSED_HEAD_MODES:
            check_head_fusion(head_fusion)
            raise ValueError(
                f"head_fusion must be one of {list(FUSED_HEAD_MODES)} (one map per target token), got {head_fusion!r}."
            )
        prompt, input_tokens, columns = self._prompt(inp)
        engine = self.lrp.engine
        device = engine.device
        prompt = prompt.to(device)
        target_ids = self._target(prompt, target, max_new_tokens, gen_args)
        ids = torch.cat([prompt, target_ids[None]], dim=1)
        prompt_length, count = prompt.shape[1], target_ids.numel()
        prepared = engine.prepare(ids)
        steps = torch.arange(count, device=device)
        starts = torch.zeros(1, count, ids.shape[1], device=device)
        starts[0, steps, prompt_length - 1 + steps] = 1.0
        logits: list[Tensor] = []
        predicting = slice(prompt_length - 1, prompt_length - 1 + count)  # the positions that predict the target
        handle = self.model.register_forward_hook(_keep_logits(logits, predicting))
        try:
            kept = engine.record(prepared, engine.layer_matrix(head_fusion))
        finally:
            handle.remove()
        relevance = engine.propagate(prepared, kept, head_fusion, start=starts, how="chains").relevance
        token_attr = relevance[0, :, :prompt_length].float().cpu()
        if columns is not None:
            token_attr = token_attr[:, columns]
        result: dict[str, Any] = {
            "seq_attr": token_attr.sum(dim=0),
            "token_attr": token_attr,
            "input_tokens": input_tokens,
            "output_tokens": self.tokenizer.convert_ids_to_tokens(target_ids.tolist()),
        }
        if logits and "output_probs" in inspect.signature(LLMAttributionResult.__init__).parameters:
            probabilities = logits[0][0].float().softmax(dim=-1)
            result["output_probs"] = probabilities.gather(1, target_ids.cpu()[:, None])[:, 0]
        return LLMAttributionResult(**result)

    def _prompt(self, inp: object) -> tuple[Tensor, list[str], Tensor | None]:
        """`(prompt ids (1, P), input token strings, kept columns or None)`."""
        if isinstance(inp, str):
            if not inp:
                raise ValueError("The prompt is empty; pass the text the continuation follows.")
            ids = self.tokenizer(inp, return_tensors="pt")["input_ids"]
            if ids.numel() == 0:
                raise ValueError(f"The prompt {inp!r} gives no tokens; pass a longer text.")
            return ids, self.tokenizer.convert_ids_to_tokens(ids[0].tolist()), None
        if isinstance(inp, TextTokenInput):
            ids = inp.inp_tensor
            columns = None if inp.itp_mask is None else inp.itp_mask[0].bool().cpu()
            return ids, list(inp.values), columns
        raise TypeError(
            f"Expected the prompt as a str (or Captum's TextTokenInput), got {type(inp).__name__}; decode token ids "
            "with tokenizer.decode(ids) first."
        )

    def _target(self, prompt: Tensor, target: object, max_new_tokens: int, gen_args: dict[str, Any] | None) -> Tensor:
        """The continuation's ids `(num_target_tokens,)`, on the prompt's device."""
        if target is None:
            return self._generate(prompt, max_new_tokens, gen_args)
        if gen_args is not None:
            raise ValueError("gen_args are for generating the target; pass either target or gen_args, not both.")
        if isinstance(target, str):
            ids = torch.tensor(self.tokenizer.encode(target, add_special_tokens=False), dtype=torch.long)
        elif isinstance(target, Tensor):
            if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
                raise TypeError(f"target ids must be an integer tensor, got dtype {target.dtype}.")
            if target.dim() == 2 and target.shape[0] == 1:
                target = target[0]
            if target.dim() != 1:
                raise ValueError(
                    f"Expected target ids of shape (num_target_tokens,) or (1, num_target_tokens), got "
                    f"{tuple(target.shape)}."
                )
            ids = target.long()
        else:
            raise TypeError(f"target must be a str, token ids (Tensor) or None, got {type(target).__name__}.")
        if ids.numel() == 0:
            raise ValueError(f"target {target!r} gives no tokens; pass at least one token to explain.")
        vocabulary = getattr(self.model.config, "vocab_size", None)
        if vocabulary is not None and bool(((ids < 0) | (ids >= vocabulary)).any()):
            raise ValueError(f"target ids must lie in [0, {vocabulary}) (the model's vocabulary), got {ids.tolist()}.")
        return ids.to(prompt.device)

    def _generate(self, prompt: Tensor, max_new_tokens: int, gen_args: dict[str, Any] | None) -> Tensor:
        generate = getattr(self.model, "generate", None)
        can_generate = getattr(self.model, "can_generate", None)
        if not callable(generate) or (callable(can_generate) and not can_generate()):
            raise TypeError(
                f"{type(self.model).__name__} cannot generate (no language-model head): pass target= (a string or "
                "token ids), or load its causal-LM class (e.g. AutoModelForCausalLM)."
            )
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False}
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.tokenizer, "eos_token_id", None)
        if pad is not None:
            options["pad_token_id"] = pad
        options.update(gen_args or {})
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                output = generate(prompt, attention_mask=torch.ones_like(prompt), **options)
        finally:
            self.model.train(was_training)
        sequences = getattr(output, "sequences", output)
        generated = sequences[0, prompt.shape[1] :]
        if generated.numel() == 0:
            raise ValueError("The model generated no tokens; pass target= or other gen_args.")
        return generated


def _keep_logits(kept: list[Tensor], positions: slice):
    """A forward hook keeping a language model's ``logits`` at ``positions``, `(1, len, vocab)`, on the CPU."""

    def hook(_module, _inputs, output) -> None:
        logits = getattr(output, "logits", None)
        if isinstance(logits, Tensor) and logits.dim() == 3:
            kept.append(logits[:, positions].detach().cpu())

    return hook
