"""HuggingFace text Transformers: BERT-style encoders and GPT-2 / Llama-style decoders.

A text adapter says where each layer's attention module is (the module whose attention call
transformers routes through its attention registry: there the query and key arrive after the
rotary position embedding, per head, and the key and value with their own, possibly fewer, heads),
which token the model's output reads, and what its forward needs. Text adapters are
:class:`~captum_tokenlrp.ModelAdapter` subclasses of modality ``"text"`` (their inputs are token
ids, not pixels) in the one adapter registry (:func:`register_text_adapter` is
:func:`~captum_tokenlrp.register_adapter` with a check that the class is a text adapter).

Encoders (``BertModel``, ``RobertaModel``, ``DistilBertModel`` and their sequence classifiers) are
bidirectional with a padding mask; the output is read at the first token (``[CLS]`` / ``<s>``).
Decoders (GPT-2, Llama, Qwen2, Gemma, Mistral: base, causal LM and sequence classifier) are causal;
the prediction is read at the last real token.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
from torch import Tensor, nn

from .base import (
    AttentionSite,
    ModelAdapter,
    adapter_class,
    adapter_class_for_model_type,
    adapter_for,
    register_adapter,
    supported_model_classes,
    transformers_classes,
)


class TextModelAdapter(ModelAdapter):
    """Architecture-specific knowledge about a text Transformer: a :class:`~captum_tokenlrp.ModelAdapter`
    of modality ``"text"`` (token ids in; no pixels, so none of the image adapter's token layout)."""

    modality: ClassVar[str] = "text"
    #: Causal (decoder) attention: the prediction at a position reads that token and the ones before it.
    is_decoder: ClassVar[bool] = False
    #: Forward keyword arguments the explanation refuses: they change the attention or reuse a cache.
    refused_arguments: ClassVar[tuple[str, ...]] = (
        "head_mask",
        "past_key_values",
        "inputs_embeds",
        "encoder_hidden_states",
    )

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.config = model.config
        #: The headless model (``model.base_model``: ``model`` itself for a base model).
        self.backbone = getattr(model, "base_model", model)
        self._check_config()

    # ------------------------------------------------------------- classes
    @classmethod
    @abstractmethod
    def model_classes(cls) -> tuple[type, ...]:
        """The handled classes, imported lazily (ImportError where this transformers lacks the family)."""

    @classmethod
    def available_model_classes(cls) -> tuple[type, ...]:
        """:meth:`model_classes`, or none where this transformers release lacks the family (a missing
        name in ``transformers`` is an AttributeError here, not an ImportError)."""
        try:
            return cls.model_classes()
        except (ImportError, AttributeError):
            return ()

    def _check_config(self) -> None:
        """Refuse configurations whose attention this adapter cannot reproduce (none by default)."""
        return None

    # -------------------------------------------------------------- layers
    @abstractmethod
    def attention_sites(self) -> list[AttentionSite]:
        """Every self-attention layer, input side first."""

    @abstractmethod
    def transformer_blocks(self) -> list[nn.Module]:
        """The Transformer blocks, input side first."""

    def input_embeddings(self) -> nn.Module:
        """The token embedding layer (``get_input_embeddings()``), for embedding-level gradient methods."""
        return self.model.get_input_embeddings()

    # ------------------------------------------------------------- outputs
    @property
    def num_labels(self) -> int | None:
        """Classes of a sequence classifier; None for base models and language-model heads."""
        if type(self.model).__name__.endswith("ForSequenceClassification"):
            return int(self.config.num_labels)
        return None

    @property
    def is_classifier(self) -> bool:
        """Whether the model has a sequence-classification head."""
        return self.num_labels is not None

    def default_start(self, token_mask: Tensor) -> Tensor:
        """Where the model's output is read, `(batch_size, num_tokens)` one-hot rows.

        Encoders: the first real token (``[CLS]``, ``<s>``; after the padding of a left-padded row),
        which their classifiers and poolers read. Decoders: the last real token of each row (right or
        left padding), where the next token is predicted and where decoder sequence classifiers read.
        """
        start = torch.zeros(token_mask.shape, dtype=torch.float32, device=token_mask.device)
        position = last_real_token(token_mask) if self.is_decoder else first_real_token(token_mask)
        return start.scatter_(1, position[:, None], 1.0)

    def forward_kwargs(self, inputs: Tensor | None = None) -> dict[str, object]:
        """Keyword arguments the explanation passes to the forward (decoders: no key/value cache)."""
        return {"use_cache": False} if self.is_decoder else {}


def first_real_token(token_mask: Tensor) -> Tensor:
    """Index of the first True per row of `(batch, N)`, `(batch,)` (after the padding of a left-padded row)."""
    return token_mask.to(torch.int8).argmax(dim=1)


def last_real_token(token_mask: Tensor) -> Tensor:
    """Index of the last True per row of `(batch, N)`, `(batch,)` (``N - 1`` under left padding)."""
    tokens = token_mask.shape[1]
    return tokens - 1 - token_mask.flip(1).to(torch.int8).argmax(dim=1)


def _merge(first: nn.Module, second: nn.Module) -> tuple[nn.Module, ...]:
    return (first,) if first is second else (first, second)


def register_text_adapter(adapter: type[TextModelAdapter]) -> type[TextModelAdapter]:
    """Register a text adapter class (usable as a decorator): :func:`~captum_tokenlrp.register_adapter` for a
    :class:`TextModelAdapter` subclass (later ones take precedence, one registry for images and text)."""
    if not (isinstance(adapter, type) and issubclass(adapter, TextModelAdapter)):
        raise TypeError(f"register_text_adapter expects a TextModelAdapter subclass, got {adapter!r}.")
    return register_adapter(adapter)


def supported_text_model_classes() -> tuple[str, ...]:
    """Names of every text model class some registered text adapter handles (``supported_model_classes("text")``)."""
    return tuple(supported_model_classes("text"))


def text_adapter_class(model: object) -> type[TextModelAdapter] | None:
    """The registered text adapter class that handles ``model``, if any."""
    return adapter_class(model, "text")


def text_adapter_for_model_type(model_type: str) -> type[TextModelAdapter] | None:
    """The text adapter that explains checkpoints of ``config.model_type``, if any."""
    return adapter_class_for_model_type(model_type, "text")


def text_adapter_for(model: object) -> TextModelAdapter:
    """The text adapter for ``model`` (:func:`~captum_tokenlrp._adapters.base.adapter_for` of modality "text").

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module`` or no text adapter handles its class.
    """
    return adapter_for(model, "text")


# --------------------------------------------------------------------------- encoders
class _BertStyleAdapter(TextModelAdapter):
    """BERT and RoBERTa: ``encoder.layer[i].attention.self.{query,key,value}``, output ``attention.output.dense``."""

    class_names: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def model_classes(cls) -> tuple[type, ...]:
        return transformers_classes(cls.class_names)

    def _check_config(self) -> None:
        kind = getattr(self.config, "position_embedding_type", "absolute")
        if kind not in (None, "absolute"):
            raise ValueError(
                f"position_embedding_type={kind!r} adds relative-position scores inside the attention, which "
                "the explanation does not reproduce; only 'absolute' is supported."
            )

    def transformer_blocks(self) -> list[nn.Module]:
        return list(self.backbone.encoder.layer)

    def attention_sites(self) -> list[AttentionSite]:
        sites = []
        for index, layer in enumerate(self.backbone.encoder.layer):
            attention = layer.attention
            module = attention.self
            head_dim = int(module.attention_head_size)
            sites.append(
                AttentionSite.of(
                    index,
                    module,
                    (module.query, module.key, module.value, attention.output.dense),
                    int(module.num_attention_heads),
                    head_dim,
                    float(getattr(module, "scaling", head_dim**-0.5)),
                    (attention, module),
                )
            )
        return sites


@register_text_adapter
class BertAdapter(_BertStyleAdapter):
    """``BertModel``, ``BertForSequenceClassification``, ``BertForMaskedLM``."""

    class_names = ("BertModel", "BertForSequenceClassification", "BertForMaskedLM")
    supported_class_names = class_names
    model_types = ("bert",)


@register_text_adapter
class RobertaAdapter(_BertStyleAdapter):
    """``RobertaModel``, ``RobertaForSequenceClassification``, ``RobertaForMaskedLM``."""

    class_names = ("RobertaModel", "RobertaForSequenceClassification", "RobertaForMaskedLM")
    supported_class_names = class_names
    model_types = ("roberta",)


@register_text_adapter
class DistilBertAdapter(TextModelAdapter):
    """``DistilBertModel``, ``DistilBertForSequenceClassification``, ``DistilBertForMaskedLM``:
    ``transformer.layer[i].attention.{q,k,v,out}_lin``."""

    supported_class_names = ("DistilBertModel", "DistilBertForSequenceClassification", "DistilBertForMaskedLM")
    model_types = ("distilbert",)

    @classmethod
    def model_classes(cls) -> tuple[type, ...]:
        return transformers_classes(cls.supported_class_names)

    def transformer_blocks(self) -> list[nn.Module]:
        return list(self.backbone.transformer.layer)

    def attention_sites(self) -> list[AttentionSite]:
        heads = int(self.config.n_heads)
        head_dim = int(self.config.dim) // heads
        sites = []
        for index, layer in enumerate(self.backbone.transformer.layer):
            module = layer.attention
            sites.append(
                AttentionSite.of(
                    index,
                    module,
                    (module.q_lin, module.k_lin, module.v_lin, module.out_lin),
                    heads,
                    head_dim,
                    float(getattr(module, "scaling", head_dim**-0.5)),
                )
            )
        return sites


# --------------------------------------------------------------------------- decoders
@register_text_adapter
class GPT2Adapter(TextModelAdapter):
    """``GPT2Model``, ``GPT2LMHeadModel``, ``GPT2ForSequenceClassification``: ``h[i].attn`` with one fused
    ``c_attn`` projection for query, key and value (read per head where the attention is called)."""

    supported_class_names = ("GPT2Model", "GPT2LMHeadModel", "GPT2ForSequenceClassification")
    model_types = ("gpt2",)
    is_decoder = True
    needs_registry = True

    @classmethod
    def model_classes(cls) -> tuple[type, ...]:
        return transformers_classes(cls.supported_class_names)

    def transformer_blocks(self) -> list[nn.Module]:
        return list(self.backbone.h)

    def attention_sites(self) -> list[AttentionSite]:
        sites = []
        for index, block in enumerate(self.backbone.h):
            module = block.attn
            head_dim = int(module.head_dim)
            scaling = head_dim**-0.5 if getattr(module, "scale_attn_weights", True) else 1.0
            if getattr(module, "scale_attn_by_inverse_layer_idx", False):
                scaling /= index + 1
            sites.append(
                AttentionSite.of(
                    index,
                    module,
                    (module.c_attn, module.c_attn, module.c_attn, module.c_proj),
                    int(module.num_heads),
                    head_dim,
                    float(getattr(module, "scaling", scaling)),
                )
            )
        return sites


class _LlamaStyleAdapter(TextModelAdapter):
    """Llama-style decoders: ``layers[i].self_attn.{q,k,v,o}_proj``, rotary embeddings on q and k,
    grouped-query attention (``num_key_value_heads`` <= ``num_attention_heads``)."""

    is_decoder = True
    needs_registry = True
    prefix: ClassVar[str] = ""

    @classmethod
    def model_classes(cls) -> tuple[type, ...]:
        return transformers_classes(cls.supported_class_names)

    def _check_config(self) -> None:
        softcap = getattr(self.config, "attn_logit_softcapping", None)
        if softcap is not None:
            raise ValueError(
                f"attn_logit_softcapping={softcap} is not supported (the scores are soft-capped inside the "
                "attention); models without soft-capping (Llama, Qwen2, Gemma, Mistral) are."
            )

    def transformer_blocks(self) -> list[nn.Module]:
        return list(self.backbone.layers)

    def attention_sites(self) -> list[AttentionSite]:
        heads = int(self.config.num_attention_heads)
        sites = []
        for index, layer in enumerate(self.backbone.layers):
            module = layer.self_attn
            head_dim = int(module.head_dim)
            sites.append(
                AttentionSite.of(
                    index,
                    module,
                    (module.q_proj, module.k_proj, module.v_proj, module.o_proj),
                    heads,
                    head_dim,
                    float(getattr(module, "scaling", head_dim**-0.5)),
                )
            )
        return sites


def _llama_style(prefix: str, model_type: str) -> type[_LlamaStyleAdapter]:
    names = (f"{prefix}Model", f"{prefix}ForCausalLM", f"{prefix}ForSequenceClassification")
    adapter = type(
        f"{prefix}Adapter",
        (_LlamaStyleAdapter,),
        {
            "__doc__": f"``{'``, ``'.join(names)}``: a Llama-style decoder.",
            "supported_class_names": names,
            "model_types": (model_type,),
            "__module__": __name__,
        },
    )
    return register_text_adapter(adapter)


LlamaAdapter = _llama_style("Llama", "llama")
MistralAdapter = _llama_style("Mistral", "mistral")
Qwen2Adapter = _llama_style("Qwen2", "qwen2")
GemmaAdapter = _llama_style("Gemma", "gemma")

__all__ = [
    "BertAdapter",
    "DistilBertAdapter",
    "GPT2Adapter",
    "GemmaAdapter",
    "LlamaAdapter",
    "MistralAdapter",
    "Qwen2Adapter",
    "RobertaAdapter",
    "TextModelAdapter",
    "first_real_token",
    "last_real_token",
    "register_text_adapter",
    "supported_text_model_classes",
    "text_adapter_for",
    "text_adapter_for_model_type",
]
