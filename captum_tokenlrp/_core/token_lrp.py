"""``TokenRelevanceLRP``: token relevance redistribution as a Captum attribution."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Literal, overload

import torch
from captum.log import log_usage
from torch import Tensor, nn

from .._adapters import AttentionSite
from .._utils.validation import TargetType, format_pixel_inputs, parse_targets
from ..rules import TokenRule, get_rule
from .attention_gradients import AttentionGradient, attention_gradient_pass
from .base import TokenAttribution, evaluation_mode
from .capture import CAPTURE_MODES, LayerProjections, _CapturedLayer
from .class_weighting import check_class_sensitive, class_state, contribution_scale, head_weights, weights_heads
from .engine import RelevanceEngine
from .inputs import Prepared, PreparedInputs
from .kernels import builtin_kernel, fused_redistribution, redistribution
from .propagation import (
    FUSED_HEAD_MODES,
    check_head_fusion,
    fuses_heads,
    layer_mode,
    propagate,
    propagate_by_layer,
    propagate_chains,
    reduce_blocks,
    reduce_layer,
    weighted_head_mean,
)
from .workspace import Workspace

#: Largest group of heads, in `(batch, heads, N, N)` elements, whose fused-mode work buffers are formed at
#: once (8 MB of float32): DINO ViT-S/8 at batch 8 then works one head at a time (+4 % of the kept matrices
#: per buffer instead of +50 %); small sequences keep all heads in one group. CPU only: on a GPU each group
#: costs kernel launches, and its memory is counted in gigabytes.
FUSED_CHUNK_ELEMENTS = 2**21
#: Largest block of inputs and heads, in `(inputs, heads, N, N)` elements, that the built-in kernels of a
#: fused mode work on at once on the CPU (4 MB of float32): the scores, probabilities and the kernel's
#: passes over them then run in cache instead of memory. DINO ViT-S/8 (785 tokens) works one input and
#: one head at a time; ViT-S/16 at batch 8 three heads of the whole batch.
CACHE_BLOCK_ELEMENTS = 2**20

HeadFusion = Literal["mean", "max", "min", "per_head_mean", "last_layer_per_head"] | None
#: A start ``R^(L)``: a tensor, or for a text model one of the named read-outs.
Start = Tensor | Literal["first", "last", "mean"] | None


@dataclass(frozen=True)
class _Relevance:
    relevance: Tensor
    start: Tensor
    prepared: Prepared


class RedistributionRules:
    """The rules side of token relevance redistribution, shared by the image and the text attribution.

    It knows the default rule, the rules set on layers, and how one layer's recorded projections
    become the redistribution matrix a head mode keeps. The host class provides
    :attr:`attention_sites`.
    """

    max_chunk_elements: int
    attention_sites: list[AttentionSite]

    @property
    def rule(self) -> TokenRule:
        """The default rule of every layer; assign a rule name or a :class:`TokenRule` to change it."""
        return self._rule

    @rule.setter
    def rule(self, rule: str | TokenRule) -> None:
        self._rule = get_rule(rule)

    def _configure_rules(self, rule: str | TokenRule, max_chunk_elements: int) -> None:
        self.rule = rule
        if isinstance(max_chunk_elements, bool) or not isinstance(max_chunk_elements, int) or max_chunk_elements < 1:
            raise ValueError(f"max_chunk_elements must be a positive int, got {max_chunk_elements!r}.")
        self.max_chunk_elements = max_chunk_elements

    def layer_rules(self) -> list[TokenRule]:
        """The rule each layer will use now: its module's ``rule`` if set, else the default.

        Raises
        ------
        TypeError
            If a module's ``rule`` is not a :class:`TokenRule`.
        ValueError
            If the two modules of one layer (transformers 4.x) carry different rules.
        """
        return [self._rule_for(site) for site in self.attention_sites]

    def _rule_for(self, site: AttentionSite, default: TokenRule | None = None) -> TokenRule:
        found = []
        for module in site.rule_modules:
            rule = getattr(module, "rule", None)
            if rule is None:
                continue
            if not isinstance(rule, TokenRule):
                raise TypeError(
                    f"Layer {site.layer_index}: {type(module).__name__}.rule must be a TokenRule "
                    f"(e.g. captum_tokenlrp.RULE_II), got {type(rule).__name__} {rule!r}."
                )
            found.append(rule)
        if len(found) == 2 and found[0] is not found[1]:
            raise ValueError(
                f"Layer {site.layer_index} has two different rules set ({found[0]!r} and {found[1]!r}) "
                "on its attention modules; set it on one of them."
            )
        if found:
            return found[0]
        return self.rule if default is None else default

    def _rule_set(
        self, rules: Sequence[str | TokenRule], head_fusions: Sequence[HeadFusion]
    ) -> tuple[list[str], list[TokenRule], list[str | None]]:
        """Check the arguments of ``token_relevance_by_rule``: `(names, default rules, head modes)`."""
        if isinstance(rules, (str, TokenRule)) or not rules:
            raise TypeError(f"rules must be a non-empty sequence of rule names or TokenRules, got {rules!r}.")
        if isinstance(head_fusions, str) or head_fusions is None or not head_fusions:
            raise TypeError(f"head_fusions must be a non-empty sequence of head modes, got {head_fusions!r}.")
        names = [rule if isinstance(rule, str) else (getattr(rule, "name", None) or repr(rule)) for rule in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rules must be distinct, got {names}.")
        modes = list(dict.fromkeys(check_head_fusion(mode) for mode in head_fusions))
        return names, [get_rule(rule) for rule in rules], modes

    def _rule_set_matrices(
        self, defaults: Sequence[TokenRule], modes: Sequence[str | None]
    ) -> Callable[[LayerProjections], dict[tuple[int, HeadFusion], Tensor]]:
        """Per layer, ``{(rule position, head mode): kept matrix}`` for several default rules at once."""
        if len(defaults) == 1 and len(modes) == 1:  # one matrix per layer: the single rule's path, in place
            layer_matrix = self._layer_matrix(modes[0], defaults[0])
            return lambda layer: {(0, modes[0]): layer_matrix(layer)}
        sites = self.attention_sites
        layer_rules = [[self._rule_for(site, default) for default in defaults] for site in sites]
        last_layer = len(sites) - 1

        def redistributions(layer: LayerProjections) -> dict[tuple[int, HeadFusion], Tensor]:
            rules_here = layer_rules[layer.layer_index]
            is_last = layer.layer_index == last_layer
            kept: dict[tuple[int, HeadFusion], Tensor] = {}
            if getattr(self, "fused_kernels", False):
                # One kernel call per (rule, layer head mode), as the single-rule calls make them: the maps
                # are those calls' maps exactly (the first call forms the layer's output, the others reuse it).
                by_kernel: dict[tuple[int, str | None], Tensor | None] = {}
                for position, rule in enumerate(rules_here):
                    for mode in modes:
                        key = (id(rule), layer_mode(mode, is_last))
                        if key not in by_kernel:
                            by_kernel[key] = _fused_layer_matrix(layer, rule, key[1])
                        if by_kernel[key] is not None:
                            kept[position, mode] = by_kernel[key]
            unfused = [position for position in range(len(rules_here)) if (position, modes[0]) not in kept]
            distinct = list({id(rules_here[position]): rules_here[position] for position in unfused}.values())
            chunks: dict[int, list[Tensor]] = {id(rule): [] for rule in distinct}
            if distinct:
                for state in layer.head_chunks(self.max_chunk_elements):
                    for rule in distinct:  # one state per chunk: rules share its cached norms and distances
                        chunks[id(rule)].append(redistribution(rule, state))
            for position in unfused:
                for mode in modes:
                    chunk_list = chunks[id(rules_here[position])]
                    kept[position, mode] = reduce_layer(chunk_list, mode, is_last, layer.site.num_heads)
            return kept

        return redistributions

    @staticmethod
    def _rule_set_relevance(
        names: Sequence[str],
        modes: Sequence[str | None],
        kept: Sequence[dict[tuple[int, HeadFusion], Tensor]],
        start: Tensor,
        check_finite: Callable[[Tensor, list[Tensor]], Tensor],
    ) -> dict[str, dict[HeadFusion, Tensor]]:
        """``{rule name: {head mode: relevance}}`` from the matrices of :meth:`_rule_set_matrices`."""
        result: dict[str, dict[HeadFusion, Tensor]] = {}
        for position, name in enumerate(names):
            result[name] = {}
            for mode in modes:
                layers = [matrices[position, mode] for matrices in kept]
                result[name][mode] = check_finite(propagate(start, layers, mode), layers)
        return result

    def _layer_matrix(
        self, head_fusion: str | None, default: TokenRule | None = None
    ) -> Callable[[LayerProjections], Tensor]:
        """Turns one layer's projections into the redistribution matrix ``head_fusion`` keeps.

        ``default`` replaces :attr:`rule` where no rule is set on the layer's module. The function
        also serves projections kept from an earlier forward (the explorer app replays them).
        """
        sites = self.attention_sites
        rules = [self._rule_for(site, default) for site in sites]
        last_layer = len(sites) - 1

        workspace = Workspace()

        def layer_matrix(layer: LayerProjections) -> Tensor:
            rule = rules[layer.layer_index]
            is_last = layer.layer_index == last_layer
            if getattr(self, "fused_kernels", False):  # the text views' hosts have no such option
                fused = _fused_layer_matrix(layer, rule, layer_mode(head_fusion, is_last))
                if fused is not None:
                    return fused
            kernel = builtin_kernel(rule)
            # Buffers can be reused only when the layer keeps a new, fused matrix (not the heads'
            # own) and the rule is built in (user code never sees buffers that change under it).
            reuse = workspace if kernel is not None and fuses_heads(head_fusion, is_last) else None
            limit = self.max_chunk_elements
            fused_on_cpu = fuses_heads(head_fusion, is_last) and layer.device.type == "cpu"
            if fused_on_cpu and kernel is not None:
                # Blocks of inputs and heads small enough to stay in cache while the kernel passes over them.
                blocks = layer._blocks(min(limit, CACHE_BLOCK_ELEMENTS), reuse)
                matrices = ((inputs, kernel(state, reuse, divide=False)) for inputs, state in blocks)
                return reduce_blocks(matrices, head_fusion, is_last, layer.site.num_heads, layer.batch_size)
            if fused_on_cpu:
                # Fused: the buffers need not hold every head. Groups of at most FUSED_CHUNK_ELEMENTS (one
                # head if larger) keep the work memory a small share of the L x B x N^2 fused matrices kept.
                per_head = layer.batch_size * layer.num_tokens**2
                limit = min(limit, max(per_head, FUSED_CHUNK_ELEMENTS))
            states = layer._head_chunks(limit, reuse)
            chunks = (rule.redistribution(state) if kernel is None else kernel(state, reuse) for state in states)
            return reduce_layer(chunks, head_fusion, is_last, layer.site.num_heads)

        return layer_matrix


def _per_head(projection: Tensor, site: AttentionSite) -> Tensor:
    """`(batch, N, heads * head_dim)` -> `(batch, heads, N, head_dim)` (a view)."""
    batch, tokens, _ = projection.shape
    return projection.view(batch, tokens, site.num_heads, site.head_dim).transpose(1, 2)


def _scores_stay_finite(query: Tensor, key: Tensor, value: Tensor, scale: float) -> bool:
    """Whether every score ``scale * <q_i, k_j>`` is bounded by float32's range (Cauchy-Schwarz on the largest
    norms) and the inputs are finite: two reductions, so that a fused kernel never hides an overflow."""
    if not all(bool(torch.isfinite(tensor.sum())) for tensor in (query, key, value)):
        return False
    bound = abs(scale) * float(query.float().norm(dim=-1).amax()) * float(key.float().norm(dim=-1).amax())
    return bound < torch.finfo(torch.float32).max / 4


def _fused_layer_matrix(layer: LayerProjections, rule: TokenRule, head_mode: str | None) -> Tensor | None:
    """The layer's kept matrix from one fused kernel (:func:`.kernels.fused_redistribution`), or None.

    The kernel computes the scores, the softmax, ``P @ V`` and the rule's matrix in row tiles without
    writing each head's probabilities; for a layer of the fast capture its ``P @ V`` is the output the
    model gets, so nothing is computed twice. None (the unfused path runs) for a custom rule, a device
    without a fused kernel, and a text layer (padding, grouped key/value heads: not in the kernels).
    """
    if layer.token_mask is not None or layer.key.shape != layer.query.shape:
        return None
    site = layer.site
    captured = isinstance(layer, _CapturedLayer) and layer.probabilities is None and layer.model_values is not None
    complete = captured and len(layer.done) == site.num_heads * layer.batch_size
    if captured and layer.done and not complete:  # part of the output formed already: one path per layer
        return None
    # The model's own values while its output is still to form; afterwards (a replay) the kept projection.
    value = layer.model_values if captured and not complete else _per_head(layer.value, site)
    query, key = _per_head(layer.query, site), _per_head(layer.key, site)
    if not _scores_stay_finite(query, key, value, site.scaling):
        return None  # the unfused path forms the non-finite matrix, and the error names this layer
    result = fused_redistribution(
        rule,
        query,
        key,
        value,
        scale=site.scaling,
        head_mode=head_mode,
        score_bias=layer._bias(slice(None)) if layer.score_bias is not None else None,
    )
    if result is None:
        return None
    output, matrix = result
    if captured and not complete:  # the model gets this output; complete() then has nothing left to compute
        layer.output.copy_(output)
        layer.done.update(itertools.product(range(site.num_heads), range(layer.batch_size)))
    return matrix


class TokenRelevanceLRP(RedistributionRules, TokenAttribution):
    r"""Token relevance redistribution (Sawaki & Murata, JSAI 2025) for HuggingFace vision and text Transformers.

    Layer-wise Relevance Propagation between tokens: in every layer the
    attention is turned into a row-stochastic redistribution matrix

    .. math::

        M_{ij} = \frac{a_j W_{ij}}{\sum_{j'} a_{j'} W_{ij'}},
        \qquad R^{(l-1)}_j = \sum_i R^{(l)}_i M_{ij},

    with ``i`` the output (query) token and ``j`` the input (key) token, and
    relevance is moved from the output tokens down to the input tokens. MLPs
    and LayerNorms act on tokens separately and move no relevance between
    them. The total is conserved exactly and relevance stays non-negative.
    The activation ``a_j`` and weight ``W_ij`` come from a :class:`TokenRule`
    (rules (i)-(iv) of the paper, or your own).

    The cost is one forward pass under ``torch.no_grad()``. With the default
    ``attention_capture="fast"`` each layer's attention probabilities are computed
    once, in float32, from the hooked query and key with the module's own scaling,
    and the layer's output is formed from them: for the call, the model's entry in
    transformers' attention interface (``ALL_ATTENTION_FUNCTIONS``, e.g. ``"sdpa"``)
    sends the recorded layers' calls to the recorder (every other call goes where it
    went before). The interface and every hook are restored on exit (also on
    an error), so the model is unchanged after the call; the result is the same
    whatever ``attn_implementation`` the model uses (see ``attention_capture`` and
    :mod:`captum_tokenlrp._core.capture` for the other two modes).

    Parameters
    ----------
    model : nn.Module
        A HuggingFace Transformer with a registered adapter, transformers 4.x or 5.x layout.
        Vision: ViT (e.g. ``facebook/dino-vits16``), DeiT, DINOv2 (with or without registers),
        ViT-MAE and BEiT, bare or with their image-classification heads, and the vision towers
        of CLIP and SigLIP. Text: BERT, RoBERTa and DistilBERT encoders and GPT-2, Llama, Qwen2,
        Gemma and Mistral decoders, bare, with a language-model head or a sequence classifier
        (:func:`~captum_tokenlrp.supported_model_classes` lists the classes). The model's modality
        picks the inputs: ``pixel_values`` or token ids.
    rule : str or TokenRule, default "iv"
        Default rule for every layer: ``"i"``, ``"ii"``, ``"iii"``, ``"iv"``, a
        name registered with :func:`~captum_tokenlrp.register_rule`, or any
        :class:`TokenRule`.
    max_chunk_elements : int, default 2**25
        Bound on the `(batch, heads, N, N)` work tensors of one layer: heads are
        processed in groups small enough to stay under it (the result does not
        change), so long sequences fit in memory. Rules therefore see a state
        whose head axis may be a group of heads.
    tokenizer : tokenizer or processor, optional
        Tokenizes prompt strings given as ``target`` to an image-text model (CLIP, SigLIP).
    attention_capture : {"fast", "exact", "recompute"}, default "fast"
        How the forward pass yields each layer's attention probabilities. ``"fast"``: each
        layer's attention is computed once, in float32, by the explanation, which also forms the
        layer's output from it (the model's outputs during the call equal its own within float32
        rounding; nothing is computed twice). ``"exact"``: the model's outputs stay bitwise its
        own (a float32 eager model hands over the probabilities it computed; other
        implementations, e.g. sdpa, run their kernel and the probabilities are recomputed from q
        and k). ``"recompute"``: always recompute. The relevance is the same in all three within
        float32 rounding; the model is unchanged after the call in all three.
    class_sensitive : {None, "heads", "attention", "attention+heads"}, default None
        None: the paper's rules, which do not depend on the class (what a label-free model such
        as DINO gets). Otherwise (classifiers only) ``target`` selects the class whose logit ``S``
        steers the redistribution through each attention weight's positive contribution
        ``C_hij = (dS/dA_hij * A_hij)^+``: ``"heads"`` fuses the heads' matrices by their share of
        ``C`` (``head_fusion="mean"`` only), ``"attention"`` runs the rule on each head's class
        attention ``A^c_ij = C_ij / s``, with ``s`` the largest row sum of ``C`` in the whole model
        (per image), ``"attention+heads"`` does both (see
        :mod:`captum_tokenlrp._core.class_weighting`). Every layer's matrix stays row-stochastic, so
        relevance stays non-negative and conserved. Costs one forward and one backward pass.
    fused_kernels : bool, default True
        Built-in rules (i)-(iv) on vision models take the fused kernels (Triton on CUDA, a C++
        kernel built on first use on the CPU and cached per torch version: scores, softmax,
        ``P @ V`` and the rule's matrix in row tiles, no per-head probabilities written; under the
        fast capture the kernel's ``P @ V`` is the layer's output). Maps equal the unfused path's
        within float32 rounding; :meth:`token_relevance_by_rule` makes the same kernel calls, so its
        maps are the single-rule calls' bit for bit. Custom rules, text layers (padding, grouped
        key/value heads), a layer whose scores could overflow float32 or whose inputs are not finite
        (so a non-finite layer is still named in the error), and a device without a kernel (no
        compiler: one log line) take the unfused path. False: the unfused path everywhere.

    Notes
    -----
    **Per-layer rules, Captum style.** Setting ``rule`` on a layer's attention
    module overrides the default for that layer::

        model.layers[3].attention.rule = RULE_II            # transformers 5
        model.encoder.layer[3].attention.rule = RULE_II     # transformers 4.x

    (for a classifier, on ``model.vit``). Such rules are read on every call and
    never removed. In transformers 4.x the inner ``attention.attention``
    module is accepted too.

    **Training mode.** Dropout would make maps random, so the forward runs in
    eval mode; each module's own ``training`` flag is restored afterwards.

    **Empty rows.** A row of ``z_ij = a_j W_ij`` summing to zero (only possible
    when ``a_i = 0`` and every other contribution is zero) is replaced by the
    identity row: the token keeps its relevance.

    **Text models.** ``w_ij`` are the model's own attention probabilities (its causal and padding
    masks, rotary position embeddings and grouped-query attention included) and ``v_j`` the value
    vectors they multiply (a key/value head shared by several query heads gives each of them its
    values). Pad tokens (``attention_mask`` 0) get no attention, so they receive no relevance, and
    the start is zero on them; the value mean ``v_mean`` of rules (ii) and (iv) is taken over the
    real tokens, so a sentence in a padded batch gets the relevance it gets alone. Decoders given a
    padded ``attention_mask`` and no ``position_ids`` run with positions counting the real tokens
    (as ``generate`` does). The start is where the model's output is read: the first token
    (``[CLS]``, ``<s>``) of an encoder, the last real token of a decoder; ``target`` picks another
    position (a model without a classification head); ``initial_relevance="mean"`` starts from the
    attention-mask-weighted mean of the tokens, the read-out of mean-pooled sentence embeddings
    (sentence-transformers); ``"first"`` / ``"last"`` name the two ends. ``attribute`` returns the
    token relevance itself, `(batch_size, num_tokens)` like ``input_ids``.

    Examples
    --------
    >>> from transformers import ViTModel
    >>> model = ViTModel.from_pretrained("facebook/dino-vits16")  # doctest: +SKIP
    >>> lrp = TokenRelevanceLRP(model, rule="iv")                  # doctest: +SKIP
    >>> relevance = lrp.token_relevance(pixel_values)  # (batch, 197) # doctest: +SKIP
    """

    modalities: ClassVar[tuple[str, ...]] = ("image", "text")

    def __init__(
        self,
        model: nn.Module,
        rule: str | TokenRule = "iv",
        *,
        max_chunk_elements: int = 2**25,
        tokenizer: Any = None,
        attention_capture: str = "fast",
        class_sensitive: str | None = None,
        fused_kernels: bool = True,
    ) -> None:
        super().__init__(model, tokenizer=tokenizer)
        if not isinstance(fused_kernels, bool):
            raise TypeError(f"fused_kernels must be True or False, got {type(fused_kernels).__name__}.")
        #: Whether built-in rules take the fused kernels (see the class's parameters).
        self.fused_kernels = fused_kernels
        self.class_sensitive = check_class_sensitive(class_sensitive)
        if self.class_sensitive is not None and not self._adapter.is_classifier:
            raise ValueError(
                f"class_sensitive={class_sensitive!r} explains a class logit, but {type(self.model).__name__} has "
                "no classification head. Use a classifier (e.g. ViTForImageClassification), or class_sensitive=None: "
                "the paper's class-agnostic rules, which explain label-free models such as DINO."
            )
        if attention_capture not in CAPTURE_MODES:
            raise ValueError(
                f'attention_capture must be one of {CAPTURE_MODES}, got {attention_capture!r}; "fast" computes '
                "each layer's attention once (outputs within float32 rounding of the model's own kernel)."
            )
        self.attention_capture = attention_capture
        self._configure_rules(rule, max_chunk_elements)

    @property
    def engine(self) -> RelevanceEngine:
        """The steps as public verbs, layer matrices and propagation included (the explorer app replays rules
        over one forward pass's projections with it; see :class:`~captum_tokenlrp._core.engine.RelevanceEngine`)."""
        return RelevanceEngine(self)

    @property
    def target_sensitive(self) -> bool:  # type: ignore[override]
        """Whether ``target`` changes the map beyond the start: True for the class-sensitive modes."""
        return self.class_sensitive is not None

    # -------------------------------------------------------------- relevance
    def token_relevance(
        self,
        inputs: Tensor | tuple[Tensor],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        initial_relevance: Start = None,
        head_fusion: HeadFusion = "mean",
    ) -> Tensor:
        """Relevance of every input token, in the model's own token order (CLS at index 0).

        Parameters
        ----------
        inputs : Tensor, 1-tuple of Tensor, mapping, str or sequence of str
            An image model: ``pixel_values`` of shape `(batch_size, channels, height, width)`.
            A text model: ``input_ids`` `(batch_size, num_tokens)`, a tokenizer's output, or
            with ``tokenizer`` given the text itself (see :meth:`TokenAttribution.token_relevance`).
        target : int, str, sequence of int or str, or Tensor, optional
            For a model without a head (``ViTModel``, DINO, ``BertModel``): the output token to
            explain, per sample or for all (default: where the output is read, CLS for images;
            see the class notes for text; negative indices count from the end, as in Python).
            For a classifier: the class index, or its name in ``model.config.id2label`` (``target="star"``). With
            ``class_sensitive`` set, it selects the class whose
            logit steers the redistribution (default: the predicted class); without,
            it is validated but, since rules (i)-(iv) do not depend on the class,
            relevance starts where the head reads whatever the class (a
            ``UserWarning`` says so once per instance). Any integer type Captum
            accepts: int, numpy integers, sequences, arrays, tensors.
        additional_forward_args : tuple, dict or object, optional
            Extra arguments for the model's forward: a tuple is passed
            positionally after ``inputs`` (Captum convention), a dict by keyword,
            e.g. ``{"interpolate_pos_encoding": True}``.
        initial_relevance : Tensor or {"first", "last", "mean"}, optional
            Non-negative start vector ``R^(L)`` of shape `(num_tokens,)` or
            `(batch_size, num_tokens)` instead of a one-hot token (class-agnostic
            rules only: the class-sensitive modes start where the classifier reads).
            A text model's start is zero on padding; it also takes a named start
            (see the class notes).
        head_fusion : str or None, default "mean"
            ``"mean"``: average the heads' redistribution matrices in each layer
            (rule (i) + mean is Attention Rollout); ``"max"`` / ``"min"``:
            elementwise over heads, rows renormalised; ``None``: one chain per
            head through all layers (the paper's per-head figure);
            ``"per_head_mean"``: the mean over heads of the per-head maps (the
            paper's aggregate at the end); ``"last_layer_per_head"``: per head
            in the last layer, heads fused by mean below (the DINO last-layer view).

        Returns
        -------
        Tensor
            float32 relevance of shape `(batch_size, num_tokens)` for the fused
            modes and `(batch_size, num_heads, num_tokens)` for ``None`` and
            ``"last_layer_per_head"``; each map sums to the initial total.
        """
        return super().token_relevance(
            inputs, target, additional_forward_args, initial_relevance=initial_relevance, head_fusion=head_fusion
        )

    relevance_options: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"initial_relevance": None, "head_fusion": "mean"}
    )

    def _token_relevance(
        self, prepared: Prepared, target: TargetType, *, initial_relevance: Start, head_fusion: object
    ) -> Tensor:
        return self._relevance(prepared, target, initial_relevance, head_fusion).relevance

    def _relevance(
        self,
        prepared: Prepared,
        target: TargetType,
        initial_relevance: Start,
        head_fusion: object,
        propagation: Callable[[Tensor, Sequence[Tensor], str | None], Tensor] = propagate,
    ) -> _Relevance:
        head_fusion = check_head_fusion(head_fusion)
        if self.class_sensitive is not None:
            self._check_class_options(initial_relevance, (head_fusion,))
            layers = self._class_matrices(prepared, target, [None], [head_fusion])
            kept = [matrices[0, head_fusion] for matrices in layers]
            return self._propagated(prepared, None, kept, head_fusion, propagation)
        explicit = self._check_start(prepared, target, initial_relevance)
        kept = self._layer_matrices(prepared, head_fusion)
        return self._propagated(prepared, explicit, kept, head_fusion, propagation)

    # ------------------------------------------------------- class-sensitive
    def _check_class_options(self, initial_relevance: Start, head_fusions: Sequence[str | None]) -> None:
        if initial_relevance is not None:
            raise ValueError(
                f"class_sensitive={self.class_sensitive!r} starts where the classifier reads and explains the class "
                "given as target; initial_relevance is for the class-agnostic rules (class_sensitive=None)."
            )
        if weights_heads(self.class_sensitive):
            other = [mode for mode in head_fusions if mode != "mean"]
            if other:
                raise ValueError(
                    f"class_sensitive={self.class_sensitive!r} fuses the heads by their contribution to the class, so "
                    f'head_fusion must be "mean", got {other[0]!r}; class_sensitive="attention" keeps every head mode.'
                )

    def _attention_gradients(self, prepared: Prepared, target: TargetType) -> list[AttentionGradient]:
        """One forward and one backward pass: every layer's attention, values and ``dS/dA`` for the class logit
        ``S`` of ``target`` (default: the predicted class, read from the same forward pass)."""
        adapter = self._adapter
        if isinstance(prepared, PreparedInputs):
            # Inputs that require grad: the graph exists even when every parameter is frozen.
            inputs = prepared.pixel_values.detach().clone().requires_grad_(True)
            targets = parse_targets(target, adapter, prepared.layout, len(inputs))
        else:  # token ids: the pass makes the first layer's attention output the graph's leaf
            inputs = prepared.input_ids
            targets = None if target is None else self._inputs.class_targets(self, prepared, target)
        kwargs = {**adapter.forward_kwargs(inputs), **prepared.kwargs}

        def class_logit() -> Tensor:
            with adapter.explaining():
                logits = adapter.forward_module(inputs, *prepared.args, **kwargs).logits
            chosen = logits.detach().argmax(dim=-1) if targets is None else targets.to(logits.device)
            return logits.gather(1, chosen[:, None])[:, 0]

        with evaluation_mode(self.model):
            return attention_gradient_pass(
                self.attention_sites,
                class_logit,
                token_mask=prepared.token_mask,
                needs_registry=adapter.needs_registry,
            )[1]

    def _class_matrices(
        self,
        prepared: Prepared,
        target: TargetType,
        defaults: Sequence[TokenRule | None],
        modes: Sequence[str | None],
    ) -> list[dict[tuple[int, HeadFusion], Tensor]]:
        """Per layer, ``{(rule position, head mode): kept matrix}`` of the class-sensitive redistribution."""
        sites = self.attention_sites
        layers = self._attention_gradients(prepared, target)
        scale = contribution_scale(layers)
        last_layer = len(sites) - 1
        kept = []
        for site, layer in zip(sites, layers, strict=True):
            rules_here = [self._rule_for(site, default) for default in defaults]
            state = class_state(layer, self.class_sensitive, scale)  # shared: rules reuse its norms and distances
            distinct = {id(rule): rule for rule in rules_here}
            # One rule: its built-in kernel may work in place on the state's attention, a tensor of ours (the
            # positive contribution it came from is already computed, by contribution_scale).
            workspace = Workspace() if len(distinct) == 1 else None
            matrices = {key: redistribution(rule, state, workspace) for key, rule in distinct.items()}
            weights = head_weights(layer) if weights_heads(self.class_sensitive) else None
            is_last = layer.layer_index == last_layer
            kept.append(
                {
                    (position, mode): (
                        weighted_head_mean(matrices[id(rule)], weights)
                        if weights is not None
                        else reduce_layer([matrices[id(rule)]], mode, is_last, site.num_heads)
                    )
                    for position, rule in enumerate(rules_here)
                    for mode in modes
                }
            )
        return kept

    def _propagated(
        self,
        prepared: Prepared,
        explicit: Tensor | None,
        kept: Sequence[Tensor],
        head_fusion: str | None,
        propagation: Callable[[Tensor, Sequence[Tensor], str | None], Tensor] = propagate,
    ) -> _Relevance:
        """Move the start down through ``kept`` (this forward's matrices, or matrices replayed from kept
        projections, as the explorer app does); a non-finite result raises the ValueError naming its layer."""
        start = self._start(prepared, explicit)
        return _Relevance(self._check_finite(propagation(start, kept, head_fusion), kept, prepared), start, prepared)

    def token_relevance_by_rule(
        self,
        inputs: Tensor | tuple[Tensor],
        rules: Sequence[str | TokenRule],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        initial_relevance: Start = None,
        head_fusions: Sequence[HeadFusion] = ("mean",),
    ) -> dict[str, dict[HeadFusion, Tensor]]:
        """Several rules and head modes from **one** forward pass.

        The attention probabilities, value vectors and derived quantities (centred value norms,
        pairwise value distances) of each layer are computed once and shared by every rule.
        ``result[name][mode]`` equals ``TokenRelevanceLRP(model, rule).token_relevance(inputs,
        ..., head_fusion=mode)``.

        Parameters
        ----------
        inputs, target, additional_forward_args, initial_relevance
            As in :meth:`token_relevance`.
        rules : sequence of str or TokenRule
            Rules to use as the default of every layer (a rule set on a layer's module still
            overrides it there, as in :meth:`token_relevance`).
        head_fusions : sequence of str or None, default ("mean",)
            Head modes of :meth:`token_relevance`, e.g. ``("mean", None)`` for the fused map and
            one map per head.

        Returns
        -------
        dict of str to dict
            ``{rule name: {head mode: relevance}}``; the rule name is the string given, or the
            rule's ``name`` (its ``repr`` when unnamed). Shapes as in :meth:`token_relevance`.
        """
        names, defaults, modes = self._rule_set(rules, head_fusions)
        prepared = self._prepare(inputs, additional_forward_args)
        if self.class_sensitive is not None:
            self._check_class_options(initial_relevance, modes)
            explicit, kept = None, self._class_matrices(prepared, target, defaults, modes)
        else:
            explicit = self._check_start(prepared, target, initial_relevance)
            kept = self._record(prepared, self.attention_sites, self._rule_set_matrices(defaults, modes))
        start = self._start(prepared, explicit)
        return self._rule_set_relevance(
            names, modes, kept, start, lambda relevance, layers: self._check_finite(relevance, layers, prepared)
        )

    def _layer_matrices(self, prepared: Prepared, head_fusion: str | None) -> list[Tensor]:
        """One forward pass; per layer the redistribution matrix the head mode needs."""
        return self._record(prepared, self.attention_sites, self._layer_matrix(head_fusion))

    def all_token_relevance(
        self,
        inputs: Tensor | tuple[Tensor],
        additional_forward_args: Any = None,
        *,
        head_fusion: HeadFusion = "mean",
    ) -> Tensor:
        """Relevance of every input token for every output token, from one forward pass.

        Row ``i`` is what :meth:`token_relevance` gives with ``target=i``: the product
        ``M^(L) ... M^(1)`` of the layers' redistribution matrices.

        Parameters
        ----------
        inputs, additional_forward_args, head_fusion
            As in :meth:`token_relevance`.

        Returns
        -------
        Tensor
            float32, `(batch_size, num_tokens, num_tokens)` (output token, input token) for the
            fused modes, `(batch_size, num_heads, num_tokens, num_tokens)` per head; rows sum to 1.
        """
        head_fusion = check_head_fusion(head_fusion)
        if self.class_sensitive is not None:
            raise ValueError(
                "all_token_relevance explains every output token with the class-agnostic rules; with "
                f"class_sensitive={self.class_sensitive!r} use token_relevance(inputs, target=class)."
            )
        prepared = self._prepare(inputs, additional_forward_args)
        kept = self._layer_matrices(prepared, head_fusion)
        batch, tokens = prepared.batch_size, prepared.num_tokens
        identity = torch.eye(tokens, device=prepared.inputs.device).expand(batch, tokens, tokens)
        return self._check_finite(propagate_chains(identity, kept, head_fusion), kept, prepared)

    def token_relevance_by_layer(
        self,
        inputs: Tensor | tuple[Tensor],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        initial_relevance: Start = None,
        head_fusion: HeadFusion = "mean",
    ) -> Tensor:
        """Where the relevance sits after each layer, from the output (``R^(L)``) down to the input (``R^(0)``).

        The propagation computes these vectors anyway; ``result[:, 0]`` is :meth:`token_relevance`'s
        map and ``result[:, -1]`` the start. Every depth sums to the initial total.

        Parameters
        ----------
        inputs, target, additional_forward_args, initial_relevance, head_fusion
            As in :meth:`token_relevance`.

        Returns
        -------
        Tensor
            float32, `(batch_size, num_layers + 1, num_tokens)` for the fused modes, `(batch_size,
            num_heads, num_layers + 1, num_tokens)` per head; index ``l`` holds ``R^(l)``, the relevance
            of the tokens entering layer ``l`` (0-based, input side first), and index ``num_layers`` the start.
        """
        prepared = self._prepare(inputs, additional_forward_args)
        return self._relevance(prepared, target, initial_relevance, head_fusion, propagate_by_layer).relevance

    # ---------------------------------------------------------- attribution
    @overload
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor],
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: Literal[False] = False,
        *,
        initial_relevance: Start = None,
        head_fusion: HeadFusion = "mean",
    ) -> Tensor | tuple[Tensor]: ...

    @overload
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        return_convergence_delta: Literal[True],
        initial_relevance: Start = None,
        head_fusion: HeadFusion = "mean",
    ) -> tuple[Tensor | tuple[Tensor], Tensor]: ...

    @log_usage()  # Captum's wrappers (NoiseTunnel) call attribute.__wrapped__
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor],
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        *,
        initial_relevance: Start = None,
        head_fusion: HeadFusion = "mean",
    ) -> Tensor | tuple[Tensor] | tuple[Tensor | tuple[Tensor], Tensor]:
        """Pixel attribution: patch-token relevance spread over each patch's pixels.

        Each patch's relevance is divided uniformly among its pixels and
        channels, so the pixel sum equals the patch tokens' sum. Special tokens
        (CLS) are not pixels; the convergence delta accounts for them.

        Parameters
        ----------
        inputs, target, additional_forward_args, initial_relevance
            As in :meth:`token_relevance`.
        return_convergence_delta : bool, default False
            Also return ``delta = initial total - (pixel sum + special-token
            relevance)`` per sample, `(batch_size,)`; ~0 up to float32 rounding.
        head_fusion : str, default "mean"
            One of the fused modes (``"mean"``, ``"max"``, ``"min"``,
            ``"per_head_mean"``); per-head maps are available from
            :meth:`token_relevance`.

        Returns
        -------
        Tensor or 1-tuple of Tensor
            float32 attributions of the same shape as ``inputs`` `(batch_size, channels, height,
            width)`, a tuple if ``inputs`` was one; with ``return_convergence_delta``, the pair
            ``(attributions, delta)``.
        """
        return super().attribute(
            inputs,
            target,
            additional_forward_args,
            return_convergence_delta,
            initial_relevance=initial_relevance,
            head_fusion=head_fusion,
        )

    def _check_attribute_options(self, options: Mapping[str, Any]) -> None:
        head_fusion = options["head_fusion"]
        if head_fusion not in FUSED_HEAD_MODES:
            check_head_fusion(head_fusion)
            raise ValueError(
                f"attribute returns one map per input (Captum convention), so head_fusion must be one of "
                f"{list(FUSED_HEAD_MODES)}, got {head_fusion!r}. For one map per head use "
                "token_relevance(..., head_fusion=None)."
            )

    def _relevance_and_start(
        self, prepared: Prepared, target: TargetType, options: Mapping[str, Any]
    ) -> tuple[Tensor, Tensor]:
        result = self._relevance(prepared, target, options["initial_relevance"], options["head_fusion"])
        return result.relevance, result.start

    def compute_convergence_delta(
        self, attributions: Tensor | tuple[Tensor], special_token_relevance: Tensor, initial_total: Tensor
    ) -> Tensor:
        """``initial_total - (attributions.sum() + special_token_relevance.sum())`` per sample.

        Parameters
        ----------
        attributions : Tensor or 1-tuple of Tensor
            `(batch_size, channels, height, width)`, as returned by :meth:`attribute`.
        special_token_relevance : Tensor
            `(batch_size, num_special_tokens)`: relevance left on CLS (and other special tokens).
        initial_total : Tensor
            `(batch_size,)`: total of the start relevance.

        Returns
        -------
        Tensor
            `(batch_size,)`, zero up to float32 rounding since the rules conserve relevance.
        """
        pixels, _ = format_pixel_inputs(attributions)
        explained = pixels.flatten(start_dim=1).sum(dim=1) + special_token_relevance.sum(dim=-1)
        return initial_total - explained

    def has_convergence_delta(self) -> bool:
        """True: ``attribute`` can return the relevance left on special tokens (Captum's API)."""
        return True

    @classmethod
    def get_name(cls) -> str:
        return "Token Relevance LRP"
