"""What the propagation needs to know about a model, independent of its architecture.

An adapter finds each layer's self-attention (its query, key and value
projections, head count and scaling) and, for a vision model, the token layout
(which token indices are special, which are image patches, on what grid).
Adding an architecture is one small subclass of :class:`ModelAdapter`
registered with :func:`register_adapter`. There is one registry for images and
text: an adapter's :attr:`ModelAdapter.modality` (``"image"`` or ``"text"``)
says which inputs its model takes, and :func:`adapter_for` serves both (the
text adapters are :class:`~captum_tokenlrp.TextModelAdapter` subclasses).
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .._utils.geometry import TokenLayout
from .._utils.stack import user_stacklevel


@dataclass(frozen=True)
class AttentionSite:
    """One self-attention layer of the model.

    Attributes
    ----------
    layer_index : int
        0 for the layer nearest to the input.
    module : nn.Module
        The module that owns the projections; its forward hook fires once the
        layer's query, key and value have all been computed.
    query, key, value : nn.Module
        Projections whose outputs have shape `(batch_size, num_tokens, num_heads * head_dim)`.
    output : nn.Module
        The output projection; its input is the attention's result ``sum_j w_ij v_j`` with heads
        merged, `(batch_size, num_tokens, num_heads * head_dim)` (gradient methods read its gradient).
    num_heads, head_dim : int
        Head layout of the projections' outputs.
    scaling : float
        Factor applied to ``<q_i, k_j>`` before the softmax (the module's own).
    rule_modules : tuple of nn.Module
        Modules on which a user may set ``.rule`` to override this layer's rule.
    score_bias : tuple of nn.Module
        Modules whose most recent outputs are added to the scaled scores before the softmax,
        each broadcastable to `(batch_size, num_heads, N, N)` (BEiT's relative position biases,
        per layer and shared). Each must run before ``module``'s forward hook fires.
    """

    layer_index: int
    module: nn.Module
    query: nn.Module
    key: nn.Module
    value: nn.Module
    output: nn.Module
    num_heads: int
    head_dim: int
    scaling: float
    rule_modules: tuple[nn.Module, ...]
    score_bias: tuple[nn.Module, ...] = ()

    @classmethod
    def of(
        cls,
        layer_index: int,
        module: nn.Module,
        projections: tuple[nn.Module, nn.Module, nn.Module, nn.Module],
        num_heads: int,
        head_dim: int,
        scaling: float,
        rule_modules: tuple[nn.Module, ...] | None = None,
    ) -> AttentionSite:
        """The site of ``module`` with its ``(query, key, value, output)`` projections (the short form the
        adapters use); ``rule_modules`` defaults to ``(module,)``."""
        query, key, value, output = projections
        return cls(
            layer_index,
            module,
            query,
            key,
            value,
            output,
            int(num_heads),
            int(head_dim),
            float(scaling),
            (module,) if rule_modules is None else rule_modules,
        )


#: The kinds of input an adapter's model takes (:attr:`ModelAdapter.modality`).
MODALITIES = ("image", "text")
#: What an image adapter must implement (abstract in spirit; checked by :func:`register_adapter` and on
#: construction, since a text adapter, the other modality, has no pixels and does not implement them).
IMAGE_METHODS = ("token_layout", "num_channels", "image_size")


class ModelAdapter(ABC):
    """Architecture-specific knowledge, behind one small interface.

    Every adapter says where the model's attention layers are (:meth:`attention_sites`,
    :meth:`transformer_blocks`), whether it is a classifier (:attr:`num_labels`) and which
    inputs it takes (:attr:`modality`). An image adapter (the default modality) also gives the
    token layout of an image size (:meth:`token_layout`, :attr:`num_channels`, :attr:`image_size`);
    a text adapter (:class:`~captum_tokenlrp.TextModelAdapter`) says which token the output reads.
    """

    #: ``"image"`` (``pixel_values`` in) or ``"text"`` (token ids in): which input kind explains the model.
    modality: ClassVar[str] = "image"

    #: Names of the supported classes, for error messages.
    supported_class_names: ClassVar[tuple[str, ...]] = ()

    #: Forward keyword arguments that change the attention probabilities
    #: (masks); the recomputed attention would not match them, so they are refused.
    attention_altering_arguments: ClassVar[tuple[str, ...]] = ()

    #: Whether the model accepts any image size (it always interpolates its position embeddings).
    any_image_size: ClassVar[bool] = False

    #: Whether every block is a pre-norm block whose operations AttnLRP's rules cover: LayerNorm,
    #: self-attention, residual add, LayerNorm, an MLP of two Linears around one elementwise activation
    #: module, residual add (a per-channel layer scale allowed; no relative position bias, no gated MLP).
    #: :class:`~captum_tokenlrp.baselines.AttnLRP` asks this instead of knowing the adapter classes.
    pre_norm_blocks: ClassVar[bool] = False

    #: Whether every layer has transformers' ``ViTLayer`` layout and the model ViT's head (``layernorm_before``,
    #: the attention's query/key/value/output Linears, ``layernorm_after``, a two-Linear MLP, no layer scale,
    #: the final ``layernorm``): what the hand-written relevance propagation of
    #: :class:`~captum_tokenlrp.baselines.TransformerAttribution` is written for.
    vit_layers: ClassVar[bool] = False

    #: ``config.model_type`` values of the checkpoints this adapter explains (for loading by config).
    model_types: ClassVar[tuple[str, ...]] = ()

    #: Whether the attention can only be observed through transformers' attention interface (rotary
    #: embeddings applied inside the module, a fused projection): without it the call is refused.
    needs_registry: ClassVar[bool] = False

    def __init__(self, model: nn.Module) -> None:
        missing = missing_image_methods(type(self))
        if missing:
            raise TypeError(
                f"Can't instantiate image adapter {type(self).__name__} without an implementation of "
                f"{', '.join(missing)} (an image adapter gives the token layout of its inputs)."
            )
        self.model = model
        #: The headless model (``model`` itself unless it is a task model around one).
        self.backbone: nn.Module = model

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        """Whether this adapter understands ``model``: by default, an instance of :meth:`model_classes`."""
        classes = cls.available_model_classes()
        return bool(classes) and isinstance(model, classes)

    @classmethod
    def model_classes(cls) -> tuple[type, ...]:
        """The model classes (``from_pretrained``), the headless one first; empty if none. Import them here,
        lazily: a transformers release without the family raises ImportError, which means "none"."""
        return ()

    @classmethod
    def available_model_classes(cls) -> tuple[type, ...]:
        """:meth:`model_classes`, or none where this transformers release lacks the family."""
        try:
            return cls.model_classes()
        except ImportError:
            return ()

    @classmethod
    def loading_options(cls, model_class: type) -> dict[str, object]:
        """Extra ``from_pretrained`` arguments for ``model_class`` (e.g. no unused pooler)."""
        return {}

    @abstractmethod
    def attention_sites(self) -> list[AttentionSite]:
        """Every self-attention layer, input side first."""

    @abstractmethod
    def transformer_blocks(self) -> list[nn.Module]:
        """The Transformer blocks (attention + MLP), input side first; each outputs the tokens
        `(batch_size, num_tokens, hidden_size)` (possibly as the first item of a tuple)."""

    def token_layout(self, height: int, width: int) -> TokenLayout:
        """The token layout for an input image of ``height`` x ``width`` pixels (image adapters)."""
        raise NotImplementedError(f"{type(self).__name__} ({self.modality} model) has no image token layout.")

    @property
    def num_channels(self) -> int:
        """Channels the model expects in ``pixel_values`` (image adapters)."""
        raise NotImplementedError(f"{type(self).__name__} ({self.modality} model) takes no pixel_values.")

    @property
    def image_size(self) -> tuple[int, int]:
        """The size the position embeddings were trained for, `(height, width)` (image adapters)."""
        raise NotImplementedError(f"{type(self).__name__} ({self.modality} model) takes no images.")

    def classifier_start(self, layout: TokenLayout) -> Tensor:
        """The start relevance `(num_tokens,)` of a classifier: the tokens its head reads (CLS by default)."""
        start = torch.zeros(layout.num_tokens)
        start[0] = 1.0
        return start

    def default_start(self, layout: TokenLayout) -> Tensor:
        """Where the model's output is read, `(num_tokens,)` or `(batch_size, num_tokens)`, summing to 1.

        The start of the class-agnostic methods when no ``target`` is given: a classifier's
        :meth:`classifier_start`; for a model without a head, the token its pooled output reads
        (CLS, index 0, by default). It is called after the forward pass of the call, so an
        adapter may return what :meth:`explaining` recorded during it (SigLIP's attention pooling).
        """
        if self.is_classifier:
            return self.classifier_start(layout)
        start = torch.zeros(layout.num_tokens)
        start[0] = 1.0
        return start

    def explaining(self) -> AbstractContextManager[None]:
        """Reversible changes and hooks active during every forward pass of an explanation.

        The default changes nothing. An adapter may, for instance, turn off random token
        masking (ViT-MAE) or record what :meth:`default_start` needs; everything must be
        restored on exit, also on error.
        """
        return nullcontext()

    @property
    def forward_module(self) -> nn.Module:
        """The module the explanation runs, ``pixel_values`` first: the model itself by default
        (an image-text model's vision tower, whose output the class-agnostic methods explain)."""
        return self.model

    def output_embedding(self, output: object) -> Tensor:
        """The image embedding `(batch_size, hidden)` in ``forward_module``'s output: the output CLS token
        by default (``last_hidden_state[:, 0]``); gradient methods explain a projection of it."""
        tokens = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        return tokens[:, 0]

    def forward_kwargs(self, inputs: Tensor | None = None) -> dict[str, object]:
        """Extra keyword arguments the explanation passes to the model's forward for ``inputs`` (its
        ``pixel_values`` or token ids; none by default)."""
        return {}

    @property
    def num_labels(self) -> int | None:
        """Number of classes for a classifier, ``None`` for a model without a head."""
        return None

    @property
    def is_classifier(self) -> bool:
        """Whether the model has a classification head."""
        return self.num_labels is not None


def missing_image_methods(adapter: type[ModelAdapter]) -> list[str]:
    """The :data:`IMAGE_METHODS` an image adapter class leaves to the base (none for a text adapter)."""
    if adapter.modality != "image":
        return []
    return [name for name in IMAGE_METHODS if getattr(adapter, name) is getattr(ModelAdapter, name)]


def transformers_classes(names: Sequence[str]) -> tuple[type, ...]:
    """``transformers``' classes of these names, imported lazily; ImportError where this release lacks one
    (what :meth:`ModelAdapter.available_model_classes` reads as "this family is not here")."""
    import transformers

    try:
        return tuple(getattr(transformers, name) for name in names)
    except AttributeError as error:
        raise ImportError(str(error)) from None


_ADAPTERS: list[type[ModelAdapter]] = []


def _check_modality(modality: str | None) -> None:
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES} or None (all), got {modality!r}.")


def register_adapter(adapter: type[ModelAdapter]) -> type[ModelAdapter]:
    """Register an adapter class, image or text (usable as a decorator); later ones take precedence."""
    if not (isinstance(adapter, type) and issubclass(adapter, ModelAdapter)):
        raise TypeError(f"register_adapter expects a ModelAdapter subclass, got {adapter!r}.")
    if adapter.modality not in MODALITIES:
        raise ValueError(f"{adapter.__name__}.modality must be one of {MODALITIES}, got {adapter.modality!r}.")
    missing = missing_image_methods(adapter)
    if missing:
        raise TypeError(
            f"{adapter.__name__} is an image adapter (modality 'image') but does not implement {', '.join(missing)}: "
            "an image adapter gives the token layout of its inputs."
        )
    _ADAPTERS.insert(0, adapter)
    return adapter


def registered_adapters(modality: str | None = None) -> tuple[type[ModelAdapter], ...]:
    """Every registered adapter class of ``modality`` (None: all), in registration order."""
    _check_modality(modality)
    return tuple(adapter for adapter in reversed(_ADAPTERS) if modality in (None, adapter.modality))


def supported_model_classes(modality: str | None = None) -> Sequence[str]:
    """Names of every model class some registered adapter handles; ``modality`` ``"image"`` or ``"text"``
    keeps that kind only."""
    return tuple(name for adapter in registered_adapters(modality) for name in adapter.supported_class_names)


def adapter_class_for_model_type(model_type: str, modality: str | None = None) -> type[ModelAdapter] | None:
    """The registered adapter (of ``modality``, if given) that explains checkpoints of ``config.model_type``."""
    _check_modality(modality)
    for adapter in _ADAPTERS:
        if model_type in adapter.model_types and modality in (None, adapter.modality):
            return adapter
    return None


def supported_model_types(modality: str | None = None) -> Sequence[str]:
    """``config.model_type`` values some registered adapter (of ``modality``, if given) can load and explain."""
    return tuple(name for adapter in registered_adapters(modality) for name in adapter.model_types)


def adapter_class(model: object, modality: str | None = None) -> type[ModelAdapter] | None:
    """The registered adapter class (of ``modality``, if given) that handles ``model``, if any."""
    _check_modality(modality)
    if not isinstance(model, nn.Module):
        return None
    return next(
        (adapter for adapter in _ADAPTERS if modality in (None, adapter.modality) and adapter.handles(model)), None
    )


def _unwrapped(model: object) -> tuple[object, list[str]]:
    """The model inside its wrappers, and how each was opened (see :func:`unwrap_model`)."""
    seen = []
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner, how = model.module, ".module"
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            inner, how = model._orig_mod, "._orig_mod"
        elif (
            not isinstance(model, nn.Module)
            and isinstance(getattr(model, "model", None), nn.Module)
            and hasattr(model, "task")
        ):  # a transformers Pipeline
            inner, how = model.model, ".model"
        else:
            return model, seen
        seen.append(f"{type(model).__name__} -> {how}")
        model = inner


def unwrap_model(model: object) -> object:
    """The model inside a wrapper the explanation cannot hook, with a warning saying which.

    ``torch.compile`` (its graph bypasses the forward hooks the recorder uses) -> ``._orig_mod``;
    ``nn.DataParallel`` / ``DistributedDataParallel`` -> ``.module``; a transformers ``Pipeline``
    -> ``.model``. The explanation runs the unwrapped module, which shares the wrapper's parameters.
    """
    model, seen = _unwrapped(model)
    if seen:
        warnings.warn(
            f"Explaining the model inside its wrapper ({'; '.join(seen)}): hooks cannot observe a compiled "
            "or replicated forward, so the unwrapped module (same parameters) runs on one device. Pass the "
            "unwrapped model yourself to silence this.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return model


def modality_of(model: object) -> str | None:
    """The modality of the registered adapter that handles ``model`` (inside its wrappers; no warning), or None."""
    adapter = adapter_class(_unwrapped(model)[0])
    return None if adapter is None else adapter.modality


#: How the error of :func:`adapter_for` names the models of each modality.
_KIND = {"image": "vision", "text": "text"}


def adapter_for(model: object, modality: str | None = None) -> ModelAdapter:
    """The adapter for ``model`` (after :func:`unwrap_model`), of ``modality`` if given.

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module``, or no adapter (of ``modality``) handles its class; a
        model of the other modality is named as such.
    """
    _check_modality(modality)
    model = unwrap_model(model)
    what = f"HuggingFace {_KIND[modality]} Transformer" if modality else "HuggingFace Transformer"
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected a {what} (torch.nn.Module), got {type(model).__name__}.")
    adapter = adapter_class(model, modality)
    if adapter is not None:
        return adapter(model)
    other = adapter_class(model)
    if other is not None:  # a model of the other modality
        raise TypeError(
            f"{type(model).__name__} is a {_KIND[other.modality]} Transformer, and this method explains "
            f"{_KIND[modality]} Transformers only ({', '.join(supported_model_classes(modality))}); "
            "TokenRelevanceLRP, RawAttention and AttentionRollout explain both."
        )
    raise TypeError(
        f"Unsupported model class {type(model).__name__}. Supported: "
        f"{', '.join(supported_model_classes(modality))}. Other architectures need an adapter "
        "(a ModelAdapter subclass, or a TextModelAdapter for text models, registered with register_adapter); "
        "TokenRelevanceLRP explains vision and text Transformers alike."
    )
