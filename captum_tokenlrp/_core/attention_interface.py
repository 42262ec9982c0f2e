"""Serve chosen attention modules' calls to transformers' attention interface, for one explanation.

Modeling files of the supported families look their attention function up in
``ALL_ATTENTION_FUNCTIONS`` (transformers' :class:`~transformers.AttentionInterface`) under the
config's implementation name, on every forward. For the duration of :func:`serve_attention` that
name's entry is a dispatcher, set through the interface's public mapping methods (an entry of the
instance's own mapping, which shadows the library-wide one; removed on exit, and an override the
user had set put back): a call from one of the served modules goes to the caller's function,
every other call (another model, a module the explanation does not record) to the function that
name gave before. The configs keep their implementation name, so every mask is built exactly as
the model builds it, and transformers' mask interface is not touched.

One case needs more: transformers 4.x modeling code calls its eager function directly whenever
the implementation is ``"eager"``, without asking the interface. There (only there) the configs of
the served modules are pointed at a name of ours for the call (:func:`_transformers4_eager_switch`).
Everything is restored on exit, also on error; nested explanations (several models, or the same
one inside a callback) stack.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

from torch import nn

from .._adapters import AttentionSite

#: ``capture(module, query, key, value, attention_mask, own, **kwargs)``: serves one module's call;
#: ``own`` is the function the module would have called.
Capture = Callable[..., object]

_call_ids = itertools.count()
_lock = threading.Lock()
#: id(module) -> the captures of the explanations now serving it, innermost last.
_active: dict[int, list[Capture]] = {}
#: implementation name -> [dispatcher, the entry it replaced (or None), explanations using it].
_installed: dict[str, list] = {}


def attention_registry():
    """transformers' attention-function interface ``ALL_ATTENTION_FUNCTIONS``, or None where it has none."""
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:  # pragma: no cover - transformers without the interface (< 4.48)
        return None
    return ALL_ATTENTION_FUNCTIONS


def implementation_of(config: object) -> str | None:
    """The attention implementation a config selects (``"eager"``, ``"sdpa"``, ...), read, never written."""
    return getattr(config, "_attn_implementation", None)


def calls_registry(module: nn.Module) -> bool:
    """Whether ``module``'s modeling code looks its attention function up in transformers' interface."""
    return "ALL_ATTENTION_FUNCTIONS" in vars(sys.modules.get(type(module).__module__, sys))


@functools.cache
def _eager_lookup(module_class: type) -> str | None:
    """The default ``module_class.forward`` passes to ``get_interface`` (its eager function's name).

    None where the forward does not use ``get_interface`` (transformers 4.x: ``"eager"`` then never
    reaches the interface) or its source cannot be read.
    """
    try:
        source = inspect.getsource(module_class.forward)
    except (OSError, TypeError):
        return None
    match = re.search(r"\.get_interface\(\s*[^,()]+,\s*(\w+)\s*\)", source)
    return match.group(1) if match else None


def _own_eager(module: nn.Module) -> Callable | None:
    """The eager attention function of ``module``'s modeling file (the one its forward defaults to)."""
    name = _eager_lookup(type(module)) or "eager_attention_forward"
    return getattr(sys.modules.get(type(module).__module__), name, None)


def own_attention(module: nn.Module, registry) -> Callable | None:
    """The attention function ``module`` would call itself now, or None if it cannot be found."""
    implementation = implementation_of(getattr(module, "config", None))
    with _lock:
        installed = _installed.get(implementation)
    if installed is not None:  # served by an explanation already (nested calls): the entry beneath ours
        function = installed[1]
    elif implementation not in (None, "eager") and implementation in registry:
        function = registry[implementation]
    else:
        function = None
    if function is not None:
        return function
    # "eager" is each modeling file's own function, not an interface entry.
    return _own_eager(module)


def _dispatcher(previous: Callable | None) -> Callable:
    """The interface entry: a served module's call goes to its capture, every other call where it went before."""

    def dispatch(module: nn.Module, query, key, value, attention_mask, **kwargs):
        captures = _active.get(id(module))
        if captures:
            return captures[-1](module, query, key, value, attention_mask, **kwargs)
        function = previous if previous is not None else _own_eager(module)
        if function is None:
            raise RuntimeError(
                f"{type(module).__name__} called the attention interface during an explanation, but its own "
                "attention function could not be found; pass a model whose attention modules read "
                "config._attn_implementation."
            )
        return function(module, query, key, value, attention_mask, **kwargs)

    return dispatch


@contextmanager
def _entry(registry, name: str) -> Iterator[None]:
    """Our dispatcher as the interface's entry ``name`` while any explanation needs it."""
    with _lock:
        installed = _installed.get(name)
        if installed is None:
            previous = registry.get(name)
            installed = _installed[name] = [_dispatcher(previous), previous, 0]
            registry[name] = installed[0]  # the instance's own mapping: shadows the library-wide entry
        installed[2] += 1
    try:
        yield
    finally:
        with _lock:
            installed[2] -= 1
            if installed[2] == 0:
                del _installed[name]
                dispatcher, previous = installed[0], installed[1]
                if registry.get(name) is dispatcher:
                    del registry[name]  # back to the library-wide entry (or to none: "eager" on 5.x)
                    if previous is not None and registry.get(name) is not previous:
                        registry[name] = previous  # an override of the instance's own the user had set


@contextmanager
def _transformers4_eager_switch(configs: Sequence[object]) -> Iterator[str]:
    """Point ``configs`` at a name of ours whose attention and mask are the eager ones; yields that name.

    transformers 4.x only, and only for ``attn_implementation="eager"``: its modeling code calls
    ``eager_attention_forward`` directly when the config says ``"eager"``, so the attention can
    only be served under another name. Two private fields cannot be avoided there: the configs'
    implementation (written through ``PretrainedConfig``'s ``_attn_implementation`` setter, as
    ``set_attn_implementation`` does, which would also leave ``_attn_was_changed`` behind and
    refuse a name it does not know), and the mask interface's class mapping: mask creation
    checks the name's membership in ``AttentionMaskInterface._global_mapping`` itself (no masks
    at all for an unknown name, so no causal or padding mask), ``AttentionMaskInterface.register``
    writes there, and neither 4.x nor 5.x has a public way to remove the entry again.
    """
    name = f"captum_tokenlrp_eager_{next(_call_ids)}"  # unique: explanations may nest
    saved = [(config, implementation_of(config)) for config in _with_sub_configs(configs)]
    mask_interface = None
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    except ImportError:  # pragma: no cover - transformers without masking_utils (< 4.53): no masks to build
        pass
    else:
        mask_interface = type(ALL_MASK_ATTENTION_FUNCTIONS)
        mask_interface.register(name, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    try:
        for config in configs:
            config._attn_implementation = name
        yield name
    finally:
        for config, implementation in saved:  # parents first: a parent's setter also sets its sub-configs
            config._attn_implementation = implementation
        if mask_interface is not None:
            mask_interface._global_mapping.pop(name, None)


def _with_sub_configs(configs: Sequence[object]) -> list[object]:
    """``configs`` and their sub-configs, each once, every parent before its sub-configs."""
    seen: dict[int, object] = {}

    def visit(config: object) -> None:
        if config is None or id(config) in seen:
            return
        seen[id(config)] = config
        for key in getattr(config, "sub_configs", None) or ():
            visit(getattr(config, key, None))

    for config in configs:
        visit(config)
    return list(seen.values())


@contextmanager
def serve_attention(sites: Sequence[AttentionSite], capture: Capture) -> Iterator[bool]:
    """Route the sites' attention calls to ``capture`` for the duration; yields whether it did.

    ``capture(module, query, key, value, attention_mask, own, **kwargs)`` serves each call of a
    site's module; ``own`` is the function the module would have called. Nothing changes (yields
    False) where the interface is missing, a module's modeling code does not call it (BERT on
    transformers 4.x picks an attention class instead) or a module's config or own attention
    cannot be found. The interface (and, on transformers 4.x with eager attention, the configs)
    are restored on exit, also on error.
    """
    registry = attention_registry()
    modules = [site.module for site in sites]
    configs = [getattr(module, "config", None) for module in modules]
    # Only modules whose modeling code calls the interface: elsewhere (BERT on transformers 4.x) the
    # implementation name also selects mask formats and classes, which we must not change.
    usable = registry is not None and all(config is not None for config in configs)
    usable = usable and all(calls_registry(module) for module in modules)
    own: dict[int, Callable] = {}
    for module in modules if usable else ():
        function = own_attention(module, registry)
        if function is None or implementation_of(module.config) is None:
            usable = False
            break
        own[id(module)] = function
    if not usable:
        yield False
        return

    def served(module: nn.Module, query, key, value, attention_mask, **kwargs):
        return capture(module, query, key, value, attention_mask, own[id(module)], **kwargs)

    # transformers 4.x and "eager": the forward never asks the interface (see _transformers4_eager_switch).
    bypassing = {
        id(config): config
        for module, config in zip(modules, configs, strict=True)
        if implementation_of(config) == "eager" and _eager_lookup(type(module)) is None
    }
    with ExitStack() as stack:
        names = {implementation_of(config) for config in configs if id(config) not in bypassing}
        if bypassing:
            names.add(stack.enter_context(_transformers4_eager_switch(list(bypassing.values()))))
        for name in sorted(names):
            stack.enter_context(_entry(registry, name))
        with _lock:
            for module in modules:
                _active.setdefault(id(module), []).append(served)
        try:
            yield True
        finally:
            with _lock:
                for module in modules:
                    captures = _active[id(module)]
                    captures.remove(served)
                    if not captures:
                        del _active[id(module)]
