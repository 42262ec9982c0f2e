"""What every token attribution of a text Transformer shares: inputs, padding, the start, the model pass."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn

from .._adapters import AttentionSite
from .._adapters.text import TextModelAdapter, first_real_token, last_real_token, text_adapter_for
from .._utils.stack import user_stacklevel
from .._utils.validation import (
    TargetType,
    _check_initial_relevance,
    _per_sample_targets,
    call_tokenizer,
    check_materialised,
    check_token_ids,
    class_indices,
    forward_arguments,
    text_length_limit,
)
from .base import MethodOptions, evaluation_mode
from .text_capture import record_text_layers

#: Named starts accepted as ``initial_relevance`` by the text attributions.
NAMED_STARTS = ("first", "last", "mean")

TEXT_CLASS_SPECIFIC_METHODS = (
    "captum_tokenlrp.baselines.TextGenericAttentionExplainability or Captum's LayerIntegratedGradients"
)


@dataclass(frozen=True)
class PreparedText:
    """The validated inputs of one call.

    Attributes
    ----------
    input_ids : Tensor
        `(batch_size, num_tokens)` long, on the model's device.
    token_mask : Tensor
        `(batch_size, num_tokens)` bool, True for real tokens (the ``attention_mask``; all True without one).
    kwargs : dict
        Every other forward argument, by name (``attention_mask``, ``token_type_ids``, ``position_ids``...).
    is_tuple : bool
        Whether ``inputs`` was a 1-tuple (Captum convention): ``attribute`` then returns one.
    """

    input_ids: Tensor
    token_mask: Tensor
    kwargs: dict[str, Any]
    is_tuple: bool

    @property
    def batch_size(self) -> int:
        """Inputs in the batch."""
        return self.input_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        """Tokens per input, padding included."""
        return self.input_ids.shape[1]


class TextTokenAttribution(MethodOptions, Attribution):
    """The template of the text attributions: one relevance value per input token.

    :meth:`token_relevance` validates the inputs and calls the subclass's :meth:`_token_relevance`;
    :meth:`attribute` returns the same per-token relevance, which already has the shape of the
    inputs `(batch_size, num_tokens)` (Captum's convention for token ids).

    Parameters
    ----------
    model : nn.Module
        A supported HuggingFace text Transformer (see :func:`supported_text_model_classes`).
    tokenizer : tokenizer, optional
        Tokenizes text given as ``inputs`` (a str or a list of them); its ``convert_ids_to_tokens``
        names the tokens in the visualisation helpers.
    """

    #: Whether the map depends on a classifier's ``target``.
    target_sensitive: ClassVar[bool] = False

    def __init__(self, model: nn.Module, *, tokenizer: Any = None) -> None:
        self._adapter: TextModelAdapter = text_adapter_for(model)
        model = self._adapter.model
        super().__init__(model)
        self.model = model
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------ public verbs
    def token_relevance(
        self,
        inputs: Tensor | tuple[Tensor] | Mapping[str, Tensor],
        target: TargetType = None,
        additional_forward_args: Any = None,
        **options: Any,
    ) -> Tensor:
        """Relevance of every input token, `(batch_size, num_tokens)` (or per head where the method has it).

        Parameters
        ----------
        inputs : Tensor, 1-tuple of Tensor, mapping, str or sequence of str
            ``input_ids`` `(batch_size, num_tokens)`, or a tokenizer's output (``BatchEncoding`` or
            dict with ``input_ids`` and optionally ``attention_mask``, ``token_type_ids``...), or with
            :attr:`tokenizer` set the text itself (one string or a list; padded into one batch, and
            truncated with a warning to the model's position embeddings). Token ids outside the
            vocabulary and sequences longer than the position embeddings are refused before the
            model runs.
        target : int, str, sequence of int or str, or Tensor, optional
            A classifier's class (see the method; its index or its name in ``config.id2label``), or
            for other models the position whose output is explained (negative counts from the end,
            as in Python).
        additional_forward_args : tuple, dict or object, optional
            Extra forward arguments: a tuple positionally after ``input_ids`` (Captum convention,
            e.g. ``(attention_mask,)``), a dict by keyword.
        **options
            The method's own options (:attr:`relevance_options`).
        """
        prepared = self._prepare(inputs, additional_forward_args)
        return self._token_relevance(prepared, target, **self._options(options))

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor] | Mapping[str, Tensor],
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        **options: Any,
    ) -> Tensor | tuple[Tensor] | tuple[Tensor | tuple[Tensor], Tensor]:
        """Per-token attribution, the shape of ``input_ids`` `(batch_size, num_tokens)` (Captum's convention).

        Parameters
        ----------
        inputs, target, additional_forward_args, **options
            As in :meth:`token_relevance`.
        return_convergence_delta : bool, default False
            Also return ``start total - attribution total`` per sample, `(batch_size,)` (~0).
        """
        options = self._options(options)
        self._check_attribute_options(options)
        if return_convergence_delta and not self.has_convergence_delta():
            raise ValueError(
                f"{type(self).__name__} has no convergence delta; call attribute without return_convergence_delta."
            )
        prepared = self._prepare(inputs, additional_forward_args)
        relevance, start = self._relevance_and_start(prepared, target, options)
        output = (relevance,) if prepared.is_tuple else relevance
        if not return_convergence_delta:
            return output
        return output, start.sum(dim=-1) - relevance.sum(dim=-1)

    def has_convergence_delta(self) -> bool:
        """Whether :meth:`attribute` can return a convergence delta (conserving methods)."""
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        """False: relevance is not multiplied by the inputs (Captum's flag for its metrics)."""
        return False

    # ------------------------------------------------------------------ for subclasses
    def _token_relevance(self, prepared: PreparedText, target: TargetType, **options: Any) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _token_relevance(prepared, target, ...).")

    def _relevance_and_start(
        self, prepared: PreparedText, target: TargetType, options: Mapping[str, Any]
    ) -> tuple[Tensor, Tensor | None]:
        """`(relevance, start or None)` for ``attribute``; conserving methods return their start."""
        return self._token_relevance(prepared, target, **options), None

    def _check_attribute_options(self, options: Mapping[str, Any]) -> None:
        """Refuse options that give no single map per input; none by default."""

    @property
    def attention_sites(self) -> list[AttentionSite]:
        """The model's attention layers, input side first."""
        return self._adapter.attention_sites()

    # ------------------------------------------------------------------ inputs
    def _prepare(self, inputs: object, additional_forward_args: Any) -> PreparedText:
        check_materialised(self.model)
        texts = self._texts(inputs)
        if texts is not None:
            inputs = self._tokenize(texts)
        is_tuple = isinstance(inputs, tuple)
        encoded: dict[str, Any] = {}
        if isinstance(inputs, Mapping):
            encoded = dict(inputs)
            if "input_ids" not in encoded:
                raise ValueError(
                    "A mapping given as inputs must hold 'input_ids' (a tokenizer's output), got keys "
                    f"{sorted(encoded)}."
                )
            input_ids = encoded.pop("input_ids")
        elif is_tuple:
            if len(inputs) != 1:
                raise ValueError(
                    f"inputs as a tuple must hold exactly one tensor (input_ids), got {len(inputs)}; pass the "
                    "attention mask in additional_forward_args, e.g. {'attention_mask': mask}."
                )
            input_ids = inputs[0]
        else:
            input_ids = inputs
        if not isinstance(input_ids, Tensor):
            raise TypeError(
                "Expected input_ids as a torch.Tensor of shape (batch_size, num_tokens), got "
                f"{type(input_ids).__name__}; tokenize with return_tensors='pt', or pass the text itself (a str "
                "or a list of str) with tokenizer= set."
            )
        if input_ids.dim() == 1:
            raise ValueError(
                f"Expected input_ids of shape (batch_size, num_tokens), got {tuple(input_ids.shape)}; add the batch "
                "dimension with input_ids[None]."
            )
        if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
            raise ValueError(f"Expected input_ids of shape (batch_size, num_tokens), got {tuple(input_ids.shape)}.")
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise TypeError(
                f"input_ids must hold token ids (an integer tensor), got dtype {input_ids.dtype}; embeddings are "
                "not accepted (the explanation starts at the token ids)."
            )
        args, kwargs = forward_arguments(additional_forward_args)
        overlap = sorted(set(encoded) & set(kwargs))
        if overlap:
            raise ValueError(f"{overlap} given twice: in inputs and in additional_forward_args.")
        named = self._bound(input_ids, args, {**encoded, **kwargs})
        refused = sorted(name for name in self._adapter.refused_arguments if named.get(name) is not None)
        if refused:
            raise ValueError(
                f"{', '.join(refused)} cannot be explained: the explanation runs the full sequence once, with the "
                "model's own attention (no head mask, cache or embeddings); call without it."
            )
        device = self._device()
        input_ids = input_ids.to(device)
        mask = named.get("attention_mask")
        if mask is None:
            token_mask = torch.ones(input_ids.shape, dtype=torch.bool, device=device)
        else:
            if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(input_ids.shape):
                got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(
                    f"attention_mask must be a tensor of the shape of input_ids {tuple(input_ids.shape)} "
                    f"(1 = token, 0 = padding), got {got}."
                )
            if bool(((mask != 0) & (mask != 1)).any()):
                raise ValueError("attention_mask must hold only 0 (padding) and 1 (token).")
            token_mask = mask.to(device).bool()
            if not bool(token_mask.any(dim=1).all()):
                raise ValueError("Some row of attention_mask is all padding (0): every input needs at least one token.")
            named["attention_mask"] = mask.to(device)
        if (
            self._adapter.is_decoder
            and not bool(token_mask.all())
            and named.get("position_ids") is None
            and "position_ids" in inspect.signature(self.model.forward).parameters
        ):
            # As generate() does: positions count real tokens, so a padded sentence runs as it does alone.
            named["position_ids"] = (token_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        check_token_ids(input_ids, named, self.model)
        named = {name: value.to(device) if isinstance(value, Tensor) else value for name, value in named.items()}
        named.pop("input_ids", None)
        return PreparedText(input_ids, token_mask, named, is_tuple)

    def _texts(self, inputs: object) -> list[str] | None:
        """``inputs`` as a list of texts when they are text (a str, or a list or tuple of str), else None."""
        if isinstance(inputs, (list, tuple)) and not inputs:
            raise ValueError(
                f"Expected at least one text or a tensor of input_ids, got an empty {type(inputs).__name__}."
            )
        if isinstance(inputs, str):
            texts = [inputs]
        elif isinstance(inputs, (list, tuple)) and all(isinstance(item, str) for item in inputs):
            texts = list(inputs)
        else:
            return None
        if self.tokenizer is None:
            raise TypeError(
                f"inputs are text ({type(inputs).__name__}), but {type(self).__name__} has no tokenizer: pass the "
                f"model's tokenizer, {type(self).__name__}(model, tokenizer=tokenizer), or tokenize the text "
                "yourself, tokenizer(texts, padding=True, return_tensors='pt')."
            )
        empty = [index for index, text in enumerate(texts) if not text.strip()]
        if empty:
            raise ValueError(
                f"Text {empty[0]} is empty ({texts[empty[0]]!r}): there are no tokens of it to explain. Pass at "
                "least one word."
            )
        return texts

    def _tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        """``texts`` as ``{"input_ids", "attention_mask"}``, padded on the tokenizer's side.

        Texts longer than the model's position table are truncated to it with a warning (as the command line
        does). The padding is done here, so tokenizers without a padding token (GPT-2, Llama) batch too: the
        attention mask marks it, and padding gets no relevance.
        """
        tokenizer = self.tokenizer
        limit = text_length_limit(self.model)
        rows = [list(ids) for ids in call_tokenizer(tokenizer, texts)["input_ids"]]
        longest = max(map(len, rows))
        if limit is not None and longest > limit:
            try:
                rows = [list(ids) for ids in tokenizer(texts, truncation=True, max_length=limit)["input_ids"]]
            except TypeError:  # a tokenizer without HuggingFace's truncation options
                rows = []
            if not rows or max(map(len, rows)) > limit:
                raise ValueError(
                    f"A text gives {longest} tokens but {type(self.model).__name__} takes at most {limit}, and "
                    f"{type(tokenizer).__name__} does not truncate (truncation=True, max_length=...): shorten the "
                    "text, or tokenize it yourself."
                )
            warnings.warn(
                f"A text gives {longest} tokens but {type(self.model).__name__} takes at most {limit} (its position "
                f"embeddings): it was truncated to its first {limit} tokens (special tokens included), and the map "
                "explains that part. Explain a long text in parts to see all of it.",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        empty = [index for index, row in enumerate(rows) if not row]
        if empty:
            raise ValueError(f"The tokenizer gives no tokens for text {empty[0]} ({texts[empty[0]]!r}).")
        width = max(map(len, rows))
        pad = getattr(tokenizer, "pad_token_id", None)
        if not isinstance(pad, int):  # any id will do: the attention mask marks padding
            pad = getattr(tokenizer, "eos_token_id", None)
        pad = pad if isinstance(pad, int) else 0
        left = getattr(tokenizer, "padding_side", "right") == "left"
        ids, mask = [], []
        for row in rows:
            fill = width - len(row)
            ids.append([pad] * fill + row if left else row + [pad] * fill)
            mask.append([0] * fill + [1] * len(row) if left else [1] * len(row) + [0] * fill)
        return {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(mask)}

    def _bound(self, input_ids: Tensor, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        try:
            bound = inspect.signature(self.model.forward).bind(input_ids, *args, **kwargs)
        except TypeError as error:
            raise TypeError(
                f"additional_forward_args do not fit {type(self.model).__name__}.forward: {error}. Pass a dict of "
                "keyword arguments, e.g. {'attention_mask': mask}."
            ) from None
        named = dict(bound.arguments)
        named.update(named.pop("kwargs", {}) or {})
        return {name: value for name, value in named.items() if value is not None}

    def _device(self) -> torch.device:
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    # ------------------------------------------------------------------ the start
    def _check_start(self, prepared: PreparedText, target: TargetType, initial_relevance: object) -> Tensor:
        """The start relevance `(batch_size, num_tokens)` float32: zero on padding, checked.

        ``initial_relevance`` (a tensor, or ``"first"``, ``"last"``, ``"mean"``) wins; else a model
        without a classification head starts at the ``target`` position; else where the model's
        output is read (:meth:`TextModelAdapter.default_start`).
        """
        batch, tokens = prepared.batch_size, prepared.num_tokens
        mask = prepared.token_mask
        positions = None
        if target is not None:
            targets = _per_sample_targets(class_indices(target, self.model, self._adapter.is_classifier), batch)
            if self._adapter.is_classifier:
                upper = self._adapter.num_labels
                bad = targets[(targets < 0) | (targets >= upper)]
                if bad.numel():
                    raise ValueError(f"target {bad[0].item()} is out of range: expected a class index in [0, {upper}).")
                self._warn_target_ignored(target)
            else:
                bad = targets[(targets < -tokens) | (targets >= tokens)]
                if bad.numel():
                    raise ValueError(
                        f"target {bad[0].item()} is out of range: expected a token position in [-{tokens}, {tokens})."
                    )
                positions = targets.remainder(tokens).to(mask.device)
                if not bool(mask[torch.arange(batch, device=mask.device), positions].all()):
                    raise ValueError("target points at a padding token; choose a position whose attention_mask is 1.")
        if initial_relevance is not None:
            if positions is not None:
                raise ValueError("Give either target (one position) or initial_relevance, not both.")
            return self._named_or_given_start(initial_relevance, prepared)
        if positions is not None:
            start = torch.zeros(batch, tokens, device=mask.device)
            start[torch.arange(batch, device=mask.device), positions] = 1.0
            return start
        return self._adapter.default_start(mask)

    def _named_or_given_start(self, initial_relevance: object, prepared: PreparedText) -> Tensor:
        mask = prepared.token_mask
        if isinstance(initial_relevance, str):
            if initial_relevance not in NAMED_STARTS:
                raise ValueError(
                    f"initial_relevance must be a tensor or one of {NAMED_STARTS}, got {initial_relevance!r}."
                )
            if initial_relevance == "mean":  # a mean-pooled embedding (sentence-transformers) reads every real token
                weights = mask.float()
                return weights / weights.sum(dim=1, keepdim=True)
            position = first_real_token(mask) if initial_relevance == "first" else last_real_token(mask)
            return torch.zeros(mask.shape, device=mask.device).scatter_(1, position[:, None], 1.0)
        start = _check_initial_relevance(initial_relevance, prepared.batch_size, prepared.num_tokens, mask.device)
        if bool((start[~mask] != 0).any()):
            raise ValueError("initial_relevance puts relevance on padding tokens (attention_mask 0); zero it there.")
        return start

    def _warn_target_ignored(self, target: object) -> None:
        if getattr(self, "_warned_target", False) or self.target_sensitive:
            return
        self._warned_target = True
        warnings.warn(
            f"{type(self).__name__} is class-agnostic: its map starts where the classifier reads and does not depend "
            f"on target={target!r}. For class-specific maps use {TEXT_CLASS_SPECIFIC_METHODS}. "
            "This warning is shown once per instance.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )

    # ------------------------------------------------------------------ the model pass
    def _record(self, prepared: PreparedText, sites: Sequence[AttentionSite], compute) -> list:
        """One forward pass (no grad, eval mode) recording ``compute(layer)`` for each site."""
        kwargs = {**self._adapter.forward_kwargs(), **prepared.kwargs}
        with evaluation_mode(self.model), torch.no_grad():
            with record_text_layers(
                sites, compute, prepared.token_mask, needs_registry=self._adapter.needs_registry
            ) as kept:
                self.model(prepared.input_ids, **kwargs)
        unrecorded = [site.layer_index for site, value in zip(sites, kept, strict=True) if value is None]
        if unrecorded:
            raise RuntimeError(f"The forward pass did not run attention layers {unrecorded}.")
        return kept

    def _check_finite(self, relevance: Tensor, layers: Sequence[Tensor]) -> Tensor:
        """Return ``relevance``, or raise a ValueError naming the first layer that went non-finite."""
        if bool(torch.isfinite(relevance.sum())):
            return relevance
        where = next((index for index, matrix in enumerate(layers) if not bool(torch.isfinite(matrix).all())), None)
        dtype = next(self.model.parameters()).dtype
        place = (
            f"in layer {where} (0 = nearest the input): its attention probabilities or value vectors are NaN or "
            f"infinite, i.e. the model's activations overflowed {dtype}"
            if where is not None
            else "while propagating"
        )
        raise ValueError(f"Relevance became non-finite {place}. Run the model in float32 or bfloat16.")

    def tokens(self, input_ids: Tensor) -> list[list[str]]:
        """The token strings of `(batch_size, num_tokens)` ids (needs :attr:`tokenizer`)."""
        if self.tokenizer is None:
            raise ValueError("Set tokenizer= (the model's tokenizer) to name the tokens.")
        return [self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in input_ids]
