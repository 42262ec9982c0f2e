"""The two kinds of input an attribution explains: images (``pixel_values``) and text (token ids).

:class:`~captum_tokenlrp.TokenAttribution` is one template for both; what differs between them is
here, behind one small protocol (:class:`InputKind`), chosen by the adapter's modality:

============================  ===========================================  ==========================================
step                          :class:`ImageInputs`                         :class:`TextInputs`
============================  ===========================================  ==========================================
prepare                       ``pixel_values`` checked, the token layout   token ids (or text, tokenized), padding mask
start (before the forward)    ``target`` / ``initial_relevance``, or None  the same, or the read-out token (no need to
                              (the adapter's own start, read after it)     wait: it depends on the mask only)
output of ``attribute``       patch relevance spread over its pixels       the token relevance itself
convergence delta             start - (pixels + special tokens)            start - tokens
============================  ===========================================  ==========================================
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from .._adapters import TokenLayout
from .._adapters.text import first_real_token, last_real_token
from .._utils.geometry import patch_relevance_to_pixels
from .._utils.stack import user_stacklevel
from .._utils.validation import (
    TargetType,
    TextPrompts,
    _check_initial_relevance,
    _per_sample_targets,
    bound_forward_arguments,
    call_tokenizer,
    check_forward_arguments,
    check_materialised,
    check_pixel_values,
    check_token_ids,
    class_indices,
    explicit_start,
    format_pixel_inputs,
    forward_arguments,
    one_prompt,
    parse_text_target,
    resolve_start,
    text_length_limit,
)

#: Named starts accepted as ``initial_relevance`` for text inputs.
NAMED_STARTS = ("first", "last", "mean")

#: Class-specific methods of the package, named in the warning of class-agnostic ones on a classifier: the
#: class-sensitive rules first (the same method, steered by the class), then the gradient baselines.
CLASS_SPECIFIC_METHODS = (
    "TokenRelevanceLRP(model, class_sensitive='attention') (or 'heads', 'attention+heads': the rules steered by "
    "the class), or captum_tokenlrp.baselines.GenericAttentionExplainability, TokenIntegratedGradients or "
    "TokenGradCAM"
)
#: Prompt-specific methods, named when prompts meet a class-agnostic method (class_sensitive needs a classifier).
PROMPT_SPECIFIC_METHODS = (
    "captum_tokenlrp.baselines.GenericAttentionExplainability, TokenIntegratedGradients or TokenGradCAM "
    "(they explain the image-text similarity)"
)
#: The same list for a text classifier.
TEXT_CLASS_SPECIFIC_METHODS = (
    "TokenRelevanceLRP(model, class_sensitive='attention'), "
    "captum_tokenlrp.baselines.TextGenericAttentionExplainability or Captum's LayerIntegratedGradients"
)


# =========================================================================== prepared batches
@dataclass(frozen=True)
class PreparedInputs:
    """The validated image inputs of one call, as :meth:`TokenAttribution._token_relevance` receives them.

    Attributes
    ----------
    pixel_values : Tensor
        `(batch_size, channels, height, width)`, on the model's device and in its dtype.
    is_tuple : bool
        Whether the user passed a 1-tuple (Captum convention): the output is a 1-tuple then.
    args, kwargs
        Extra model arguments, positional and keyword (``additional_forward_args`` split).
    layout : TokenLayout
        Special tokens and patch grid of these inputs.
    """

    pixel_values: Tensor
    is_tuple: bool
    args: tuple
    kwargs: dict[str, Any]
    layout: TokenLayout

    @property
    def inputs(self) -> Tensor:
        """The model's first argument: ``pixel_values``."""
        return self.pixel_values

    @property
    def token_mask(self) -> None:
        """None: every token of an image is real (the text batch's padding mask is the other kind's)."""
        return None

    @property
    def batch_size(self) -> int:
        """Inputs in the batch."""
        return self.pixel_values.shape[0]

    @property
    def num_tokens(self) -> int:
        """Tokens per input (special tokens and patches)."""
        return self.layout.num_tokens


@dataclass(frozen=True)
class PreparedText:
    """The validated text inputs of one call.

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

    #: Text passes every extra argument by name.
    args: ClassVar[tuple] = ()

    @property
    def inputs(self) -> Tensor:
        """The model's first argument: ``input_ids``."""
        return self.input_ids

    @property
    def batch_size(self) -> int:
        """Inputs in the batch."""
        return self.input_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        """Tokens per input, padding included."""
        return self.input_ids.shape[1]


Prepared = PreparedInputs | PreparedText


# =========================================================================== the protocol
class TokenAttribution(Protocol):
    """What an input kind reads of the attribution it serves (:class:`~captum_tokenlrp.TokenAttribution`;
    named here as a protocol so that this module does not import the template that imports it)."""

    model: torch.nn.Module
    tokenizer: Any
    _adapter: Any

    def _device(self) -> torch.device: ...

    def _warn_target_ignored(self, target: object, alternatives: str | None = None, force: bool = False) -> None: ...


class InputKind(Protocol):
    """What the template asks of a kind of input; :class:`ImageInputs` and :class:`TextInputs` implement it."""

    modality: str
    #: The methods a class-agnostic method names when a classifier's target meets it.
    class_specific_methods: str

    def prepare(self, attribution: TokenAttribution, inputs: object, additional_forward_args: Any) -> Prepared:
        """Validate ``inputs`` (and the extra forward arguments) into a prepared batch."""

    def prompts(self, attribution: TokenAttribution, target: object) -> TextPrompts | None:
        """``target`` as prompts of an image-text model, else None."""

    def one_target(self, attribution: TokenAttribution, target: object, caller: str) -> object:
        """``target`` for a verb returning one map per input (at most one prompt)."""

    def check_start(
        self, attribution: TokenAttribution, prepared: Prepared, target: TargetType, initial_relevance: object
    ) -> Tensor | None:
        """Before the forward pass: the start asked for (checked), or None for the adapter's own."""

    def start(self, attribution: TokenAttribution, prepared: Prepared, explicit: Tensor | None) -> Tensor:
        """After the forward pass: the start `(batch_size, num_tokens)` float32."""

    def outputs(self, relevance: Tensor, prepared: Prepared) -> Tensor:
        """What ``attribute`` returns for `(batch_size, num_tokens)` relevance."""

    def convergence_delta(
        self, attribution: TokenAttribution, relevance: Tensor, outputs: Tensor, start: Tensor, prepared: Prepared
    ) -> Tensor:
        """``start total - explained total`` per sample, `(batch_size,)`."""

    def check_recorded(self, prepared: Prepared, num_tokens: int) -> None:
        """Refuse a forward pass that ran on another number of tokens than the prepared batch has."""

    def non_finite_hint(self, attribution: TokenAttribution, prepared: Prepared | None) -> str:
        """The advice closing the error of a non-finite result."""


# =========================================================================== images
class ImageInputs:
    """``pixel_values`` `(batch, channels, height, width)`; relevance maps back to pixels."""

    modality = "image"
    class_specific_methods = CLASS_SPECIFIC_METHODS

    def prepare(self, attribution: TokenAttribution, inputs: object, additional_forward_args: Any) -> PreparedInputs:
        adapter = attribution._adapter
        pixel_values, is_tuple = format_pixel_inputs(inputs)
        args, kwargs = forward_arguments(additional_forward_args)
        named = bound_forward_arguments(adapter.forward_module, pixel_values, args, kwargs)
        check_forward_arguments(adapter, named)
        given = {name for name, value in named.items() if value is not None}
        reserved = sorted(given & set(adapter.forward_kwargs(pixel_values)))
        if reserved:
            raise ValueError(
                f"{', '.join(reserved)} is set by the explanation itself for {type(attribution.model).__name__} "
                f"(see the adapter {type(adapter).__name__}); call without it."
            )
        layout = check_pixel_values(pixel_values, adapter, bool(named.get("interpolate_pos_encoding")))
        return PreparedInputs(pixel_values, is_tuple, args, kwargs, layout)

    def prompts(self, attribution: TokenAttribution, target: object) -> TextPrompts | None:
        return parse_text_target(target, attribution._adapter, attribution.tokenizer)

    def one_target(self, attribution: TokenAttribution, target: object, caller: str) -> object:
        return one_prompt(target, attribution._adapter, attribution.tokenizer, caller)

    def check_start(
        self, attribution: TokenAttribution, prepared: PreparedInputs, target: TargetType, initial_relevance: object
    ) -> Tensor | None:
        pixel_values = prepared.pixel_values
        if isinstance(target, TextPrompts):  # the image's own start; the prompt cannot change it
            attribution._warn_target_ignored(target, PROMPT_SPECIFIC_METHODS, force=True)
            target = None
        explicit = explicit_start(
            target, initial_relevance, attribution._adapter, prepared.layout, pixel_values.shape[0], pixel_values.device
        )
        attribution._warn_target_ignored(target, CLASS_SPECIFIC_METHODS)
        return explicit

    def start(self, attribution: TokenAttribution, prepared: PreparedInputs, explicit: Tensor | None) -> Tensor:
        pixel_values = prepared.pixel_values
        return resolve_start(
            explicit, attribution._adapter, prepared.layout, pixel_values.shape[0], pixel_values.device
        )

    def outputs(self, relevance: Tensor, prepared: PreparedInputs) -> Tensor:
        layout = prepared.layout
        return patch_relevance_to_pixels(relevance[:, layout.patch_slice], layout, prepared.pixel_values.shape)

    def convergence_delta(
        self,
        attribution: TokenAttribution,
        relevance: Tensor,
        outputs: Tensor,
        start: Tensor,
        prepared: PreparedInputs,
    ) -> Tensor:
        # Special tokens (CLS) are not pixels: the relevance left on them is explained too.
        special = relevance[:, : prepared.layout.num_special_tokens]
        explained = outputs.flatten(start_dim=1).sum(dim=1) + special.sum(dim=-1)
        return start.sum(dim=-1) - explained

    def check_recorded(self, prepared: PreparedInputs, num_tokens: int) -> None:
        layout = prepared.layout
        if num_tokens != layout.num_tokens:
            raise RuntimeError(
                f"The model ran on {num_tokens} tokens, but the adapter expected {layout.num_tokens} "
                f"({layout.num_special_tokens} special + {layout.grid[0]}x{layout.grid[1]} patches)."
            )

    def non_finite_hint(self, attribution: TokenAttribution, prepared: PreparedInputs | None) -> str:
        largest = "" if prepared is None else f" reaches |pixel_values| = {float(prepared.inputs.abs().amax()):.3g}"
        return (
            f"The input{largest}; an image processor's output is normally within a few units. Check the input's "
            "scaling and normalisation (use the model's image processor), or run the model in float32."
        )


# =========================================================================== text
class TextInputs:
    """Token ids `(batch, num_tokens)` (or text, tokenized); padding is masked and gets no relevance."""

    modality = "text"
    class_specific_methods = TEXT_CLASS_SPECIFIC_METHODS

    # ------------------------------------------------------------------ prepare
    def prepare(self, attribution: TokenAttribution, inputs: object, additional_forward_args: Any) -> PreparedText:
        model, adapter = attribution.model, attribution._adapter
        check_materialised(model)
        texts = self._texts(attribution, inputs)
        if texts is not None:
            inputs = self._tokenize(attribution, texts)
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
        self._check_ids(input_ids)
        args, kwargs = forward_arguments(additional_forward_args)
        overlap = sorted(set(encoded) & set(kwargs))
        if overlap:
            raise ValueError(f"{overlap} given twice: in inputs and in additional_forward_args.")
        named = self._bound(model, input_ids, args, {**encoded, **kwargs})
        refused = sorted(name for name in adapter.refused_arguments if named.get(name) is not None)
        if refused:
            raise ValueError(
                f"{', '.join(refused)} cannot be explained: the explanation runs the full sequence once, with the "
                "model's own attention (no head mask, cache or embeddings); call without it."
            )
        device = attribution._device()
        input_ids = input_ids.to(device)
        token_mask = self._token_mask(named, input_ids, device)
        if (
            adapter.is_decoder
            and not bool(token_mask.all())
            and named.get("position_ids") is None
            and "position_ids" in inspect.signature(model.forward).parameters
        ):
            # As generate() does: positions count real tokens, so a padded sentence runs as it does alone.
            named["position_ids"] = (token_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        check_token_ids(input_ids, named, model)
        named = {name: value.to(device) if isinstance(value, Tensor) else value for name, value in named.items()}
        named.pop("input_ids", None)
        return PreparedText(input_ids, token_mask, named, is_tuple)

    @staticmethod
    def _check_ids(input_ids: object) -> None:
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

    @staticmethod
    def _token_mask(named: dict[str, Any], input_ids: Tensor, device: torch.device) -> Tensor:
        """The real tokens `(batch, N)` bool from ``attention_mask`` (checked; moved to ``device`` in ``named``)."""
        mask = named.get("attention_mask")
        if mask is None:
            return torch.ones(input_ids.shape, dtype=torch.bool, device=device)
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
        return token_mask

    @staticmethod
    def _texts(attribution: TokenAttribution, inputs: object) -> list[str] | None:
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
        name = type(attribution).__name__
        if attribution.tokenizer is None:
            raise TypeError(
                f"inputs are text ({type(inputs).__name__}), but {name} has no tokenizer: pass the "
                f"model's tokenizer, {name}(model, tokenizer=tokenizer), or tokenize the text "
                "yourself, tokenizer(texts, padding=True, return_tensors='pt')."
            )
        empty = [index for index, text in enumerate(texts) if not text.strip()]
        if empty:
            raise ValueError(
                f"Text {empty[0]} is empty ({texts[empty[0]]!r}): there are no tokens of it to explain. Pass at "
                "least one word."
            )
        return texts

    @staticmethod
    def _tokenize(attribution: TokenAttribution, texts: list[str]) -> dict[str, Tensor]:
        """``texts`` as ``{"input_ids", "attention_mask"}``, padded on the tokenizer's side.

        Texts longer than the model's position table are truncated to it with a warning (as the command line
        does). The padding is done here, so tokenizers without a padding token (GPT-2, Llama) batch too: the
        attention mask marks it, and padding gets no relevance.
        """
        tokenizer, model = attribution.tokenizer, attribution.model
        limit = text_length_limit(model)
        rows = [list(ids) for ids in call_tokenizer(tokenizer, texts)["input_ids"]]
        longest = max(map(len, rows))
        if limit is not None and longest > limit:
            try:
                rows = [list(ids) for ids in tokenizer(texts, truncation=True, max_length=limit)["input_ids"]]
            except TypeError:  # a tokenizer without HuggingFace's truncation options
                rows = []
            if not rows or max(map(len, rows)) > limit:
                raise ValueError(
                    f"A text gives {longest} tokens but {type(model).__name__} takes at most {limit}, and "
                    f"{type(tokenizer).__name__} does not truncate (truncation=True, max_length=...): shorten the "
                    "text, or tokenize it yourself."
                )
            warnings.warn(
                f"A text gives {longest} tokens but {type(model).__name__} takes at most {limit} (its position "
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

    @staticmethod
    def _bound(model: torch.nn.Module, input_ids: Tensor, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        try:
            bound = inspect.signature(model.forward).bind(input_ids, *args, **kwargs)
        except TypeError as error:
            raise TypeError(
                f"additional_forward_args do not fit {type(model).__name__}.forward: {error}. Pass a dict of "
                "keyword arguments, e.g. {'attention_mask': mask}."
            ) from None
        named = dict(bound.arguments)
        named.update(named.pop("kwargs", {}) or {})
        return {name: value for name, value in named.items() if value is not None}

    # ------------------------------------------------------------------ targets and the start
    def prompts(self, attribution: TokenAttribution, target: object) -> None:
        return None  # a text model's string target is a class name

    def one_target(self, attribution: TokenAttribution, target: object, caller: str) -> object:
        return target

    def class_targets(self, attribution: TokenAttribution, prepared: PreparedText, target: TargetType) -> Tensor:
        """A classifier's ``target`` as `(batch,)` class indices, range checked."""
        adapter = attribution._adapter
        targets = _per_sample_targets(class_indices(target, attribution.model, True), prepared.batch_size)
        upper = adapter.num_labels
        bad = targets[(targets < 0) | (targets >= upper)]
        if bad.numel():
            raise ValueError(f"target {bad[0].item()} is out of range: expected a class index in [0, {upper}).")
        return targets

    def check_start(
        self, attribution: TokenAttribution, prepared: PreparedText, target: TargetType, initial_relevance: object
    ) -> Tensor:
        """The start relevance `(batch_size, num_tokens)` float32: zero on padding, checked.

        ``initial_relevance`` (a tensor, or ``"first"``, ``"last"``, ``"mean"``) wins; else a model
        without a classification head starts at the ``target`` position; else where the model's
        output is read (:meth:`TextModelAdapter.default_start`).
        """
        adapter = attribution._adapter
        batch, tokens = prepared.batch_size, prepared.num_tokens
        mask = prepared.token_mask
        positions = None
        if target is not None:
            if adapter.is_classifier:
                self.class_targets(attribution, prepared, target)
                attribution._warn_target_ignored(target)
            else:
                targets = _per_sample_targets(class_indices(target, attribution.model, False), batch)
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
            return self.named_or_given_start(initial_relevance, prepared)
        if positions is not None:
            start = torch.zeros(batch, tokens, device=mask.device)
            start[torch.arange(batch, device=mask.device), positions] = 1.0
            return start
        return adapter.default_start(mask)

    @staticmethod
    def named_or_given_start(initial_relevance: object, prepared: PreparedText) -> Tensor:
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

    def start(self, attribution: TokenAttribution, prepared: PreparedText, explicit: Tensor | None) -> Tensor:
        return explicit if explicit is not None else attribution._adapter.default_start(prepared.token_mask)

    # ------------------------------------------------------------------ outputs
    def outputs(self, relevance: Tensor, prepared: PreparedText) -> Tensor:
        return relevance  # already the shape of input_ids (Captum's convention for token ids)

    def convergence_delta(
        self, attribution: TokenAttribution, relevance: Tensor, outputs: Tensor, start: Tensor, prepared: PreparedText
    ) -> Tensor:
        return start.sum(dim=-1) - relevance.sum(dim=-1)

    def check_recorded(self, prepared: PreparedText, num_tokens: int) -> None:
        if num_tokens != prepared.num_tokens:
            raise RuntimeError(f"The model ran on {num_tokens} tokens, but the inputs hold {prepared.num_tokens}.")

    def non_finite_hint(self, attribution: TokenAttribution, prepared: PreparedText | None) -> str:
        return "Run the model in float32 or bfloat16."


#: The input kind of each modality.
INPUT_KINDS: Mapping[str, InputKind] = {"image": ImageInputs(), "text": TextInputs()}


def input_kind(modality: str) -> InputKind:
    """The input kind of an adapter's ``modality``."""
    return INPUT_KINDS[modality]


__all__: Sequence[str] = (
    "INPUT_KINDS",
    "ImageInputs",
    "InputKind",
    "PreparedInputs",
    "PreparedText",
    "TextInputs",
    "input_kind",
)
