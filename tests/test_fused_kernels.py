"""The fused kernels of rules (i)-(iv) against float64 references written from the formulas.

Two kernels compute one layer's attention output and kept redistribution matrix in one pass
(``captum_tokenlrp._core.fused``): Triton's, checked here on CPU tensors by Triton's interpreter
(on a CUDA tensor where a GPU is present), and the C++ CPU kernel built on first use. Each is
compared with the per-sample, per-head float64 reference of METHOD.md (tests/reference.py) and
with the package's unfused path; the dispatch keeps user rules on their own path, and the CPU
falls back to the unfused path, saying so once, where the kernel cannot be built.
"""

from __future__ import annotations

import logging
import math
import os

import pytest
import torch
from reference import reference_redistribution_from_probs

from captum_tokenlrp import RULE_I, RULE_II, RULE_III, RULE_IV, TokenRule
from captum_tokenlrp._core import fused, kernels
from captum_tokenlrp._core.fused import cpu
from captum_tokenlrp._core.propagation import layer_mode, reduce_layer
from captum_tokenlrp.rules import AttentionState, AttentionWeight, UnitActivation

DOUBLE = torch.float64
RULES = ("i", "ii", "iii", "iv")
MODES = ("mean", "max", "min", None)
GPU = torch.cuda.is_available()
if not GPU:  # before Triton is imported: its kernels then run in the interpreter, on CPU tensors
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = torch.device("cuda" if GPU else "cpu")

needs_triton = pytest.mark.skipif(
    not fused.triton_available(), reason="triton is not importable (pip install triton, or the [test] extra)"
)


needs_cpu_kernel = pytest.mark.skipif(
    os.environ.get(cpu.SWITCH, "1") == "0" or cpu._compiler() is None,
    reason="no C++ compiler (or CAPTUM_TOKENLRP_FUSED_CPU=0): the fused CPU kernel cannot be built",
)
KERNELS = [pytest.param("triton", marks=needs_triton), pytest.param("cpu", marks=needs_cpu_kernel)]


def _on(kernel: str, *tensors: torch.Tensor) -> list[torch.Tensor]:
    device = DEVICE if kernel == "triton" else torch.device("cpu")
    return [tensor.to(device) for tensor in tensors]


def _inputs(batch=2, heads=3, tokens=23, dim=16, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    # A spread of score scales so that the softmax is neither uniform nor one-hot.
    q = torch.randn(batch, heads, tokens, dim, generator=generator) * 2.0
    k = torch.randn(batch, heads, tokens, dim, generator=generator)
    v = torch.randn(batch, heads, tokens, dim, generator=generator) + 0.5
    return [t.to(dtype) for t in (q, k, v)]


def _reference(q, k, v, scale, rule, mode, bias=None, token_mask=None):
    """float64 ``(output, matrix)`` of one layer: every sample and head from the formulas, then the head mode."""
    q, k, v = (t.to(DOUBLE).cpu() for t in (q, k, v))
    batch, heads, tokens, _ = q.shape
    scores = q @ k.transpose(-1, -2) * scale
    if bias is not None:
        scores = scores + bias.to(DOUBLE).cpu()
    w = torch.softmax(scores, dim=-1)
    matrices = torch.empty(batch, heads, tokens, tokens, dtype=DOUBLE)
    for b in range(batch):
        for h in range(heads):
            if token_mask is None:
                matrices[b, h] = reference_redistribution_from_probs(w[b, h], v[b, h], rule)
            else:
                matrices[b, h] = _masked_reference(w[b, h], v[b, h], rule, token_mask[b].cpu())
    if mode == "mean":
        kept = matrices.mean(dim=1)
    elif mode in ("max", "min"):
        kept = matrices.amax(dim=1) if mode == "max" else matrices.amin(dim=1)
        kept = kept / kept.sum(dim=-1, keepdim=True)
    else:
        kept = matrices
    return w @ v, kept


def _masked_reference(w, v, rule, real):
    """METHOD.md's ``M`` with ``v_mean`` over the real tokens only (AttentionState's masked mean)."""
    tokens = w.shape[0]
    mean = v[real].mean(dim=0)
    a = torch.linalg.norm(v - mean, dim=-1) if rule in ("ii", "iv") else torch.ones(tokens, dtype=DOUBLE)
    weight = w.clone()
    if rule in ("iii", "iv"):
        weight = torch.linalg.norm(v.unsqueeze(0) - v.unsqueeze(1), dim=-1) * w
    z = (weight + torch.eye(tokens, dtype=DOUBLE)) * a.unsqueeze(0)
    return z / z.sum(dim=1, keepdim=True)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mode", MODES)
def test_matches_float64_reference(kernel, rule, mode):
    q, k, v = _on(kernel, *_inputs())
    scale = 1 / math.sqrt(q.shape[-1])
    output, matrix = fused.fused_layer(q, k, v, scale=scale, rule=rule, head_mode=mode, kernel=kernel)
    expected_output, expected = _reference(q, k, v, scale, rule, mode)
    assert matrix.dtype == torch.float32 and output.dtype == torch.float32
    assert matrix.shape == expected.shape
    torch.testing.assert_close(matrix.cpu().double(), expected, rtol=1e-5, atol=2e-7)
    torch.testing.assert_close(output.cpu().double(), expected_output, rtol=1e-5, atol=1e-6)
    # Row-stochastic: the rows of every kept matrix sum to 1.
    rows = matrix.cpu().double().sum(dim=-1)
    torch.testing.assert_close(rows, torch.ones(expected.shape[:-1], dtype=DOUBLE), rtol=0.0, atol=1e-6)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("rule", ["ii", "iv"])
def test_several_tiles_and_odd_head_dim(kernel, rule, monkeypatch):
    """50 tokens (two 32-row Triton tiles, the last one ragged; 9-row CPU tiles) and a head_dim of 12."""
    monkeypatch.setattr(cpu, "TILE_FLOATS", 3 * 50 * 9)
    q, k, v = _on(kernel, *_inputs(batch=1, heads=2, tokens=50, dim=12, seed=1))
    for mode in ("mean", None):
        output, matrix = fused.fused_layer(q, k, v, scale=0.3, rule=rule, head_mode=mode, kernel=kernel)
        expected_output, expected = _reference(q, k, v, 0.3, rule, mode)
        torch.testing.assert_close(matrix.cpu().double(), expected, rtol=1e-5, atol=2e-7)
        torch.testing.assert_close(output.cpu().double(), expected_output, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("rule", RULES)
def test_score_bias_and_token_mask(kernel, rule):
    """BEiT's per-head bias, a padding mask on the keys, and the value mean over the real tokens."""
    q, k, v = _inputs(batch=2, heads=2, tokens=19, dim=16, seed=2)
    generator = torch.Generator().manual_seed(3)
    position_bias = torch.randn(2, 19, 19, generator=generator)  # (heads, N, N), as BEiT adds it
    real = torch.ones(2, 19, dtype=torch.bool)
    real[1, 14:] = False  # the second input is padded
    padding = torch.where(real, 0.0, torch.finfo(torch.float32).min)[:, None, None, :]  # (batch, 1, 1, N)
    bias = position_bias + padding
    q, k, v, bias, real = _on(kernel, q, k, v, bias, real)
    for mode in ("mean", None):
        output, matrix = fused.fused_layer(
            q, k, v, scale=0.25, rule=rule, head_mode=mode, kernel=kernel, score_bias=bias, token_mask=real
        )
        expected_output, expected = _reference(q, k, v, 0.25, rule, mode, bias=bias, token_mask=real)
        torch.testing.assert_close(matrix.cpu().double(), expected, rtol=1e-5, atol=2e-7)
        torch.testing.assert_close(output.cpu().double(), expected_output, rtol=1e-5, atol=1e-6)
    # A padded key gets nothing from a real query, in every head.
    assert bool((matrix[1, :, :14, 14:] == 0).all())


@pytest.mark.parametrize("kernel", KERNELS)
def test_near_pairs_are_exact(kernel):
    """Two tight clusters of values far from their mean: within a cluster the Gram identity alone would
    give distances of ~3e-4 x 10 instead of ~1e-4; attention stays within each cluster (score bias), so
    every off-diagonal entry of rule (iii) is such a distance and must be right to float32 rounding."""
    tokens, dim = 20, 16
    generator = torch.Generator().manual_seed(4)
    centre = torch.randn(dim, generator=generator)
    centre = 10 * centre / centre.norm()
    side = torch.where(torch.arange(tokens) < tokens // 2, 1.0, -1.0)
    v = side[:, None] * centre + 1e-5 * torch.randn(tokens, dim, generator=generator)
    q, k = torch.randn(2, tokens, dim, generator=generator)
    same = side[:, None] == side[None, :]
    bias = torch.where(same, 0.0, -1e30)
    q, k, v, bias = (t[None, None] for t in (q, k, v, bias))
    q, k, v, bias = _on(kernel, q, k, v, bias)
    _, matrix = fused.fused_layer(q, k, v, scale=0.25, rule="iii", head_mode="mean", kernel=kernel, score_bias=bias)
    _, expected = _reference(q, k, v, 0.25, "iii", "mean", bias=bias)
    off = same & ~torch.eye(tokens, dtype=torch.bool)
    got, want = matrix.cpu().double()[0][off], expected[0][off]
    assert float(want.min()) > 0
    torch.testing.assert_close(got, want, rtol=1e-3, atol=0.0)


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_row_becomes_identity_row(kernel):
    """Rule (ii): token 0 sits at the value mean (a_0 = 0) and attends only to token 3, also at the mean: its
    contributions all vanish, and its row is the identity row (METHOD.md)."""
    v = torch.zeros(1, 1, 4, 16)
    v[0, 0, 1, 0], v[0, 0, 2, 0] = 1.0, -1.0  # mean 0: a_0 = a_3 = 0
    q, k = _inputs(batch=1, heads=1, tokens=4, dim=16, seed=5)[:2]
    bias = torch.zeros(1, 1, 4, 4)
    bias[0, 0, 0, 1:3] = float("-inf")
    q, k, v, bias = _on(kernel, q, k, v, bias)
    for mode in ("mean", None):
        _, matrix = fused.fused_layer(q, k, v, scale=0.25, rule="ii", head_mode=mode, kernel=kernel, score_bias=bias)
        row = matrix.reshape(-1, 4, 4)[0, 0].cpu()
        assert row.tolist() == [1.0, 0.0, 0.0, 0.0]
        # The other rows are the formula's.
        _, expected = _reference(q, k, v, 0.25, "ii", mode, bias=bias)
        torch.testing.assert_close(matrix.reshape(-1, 4, 4)[0, 1:].cpu().double(), expected.reshape(-1, 4, 4)[0, 1:])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_accumulate_in_float32(kernel, dtype):
    """The matrix of bf16/fp16 inputs is the float64 formula of those (rounded) inputs to float32 accuracy;
    the output comes back in the inputs' dtype, within one rounding of it."""
    q, k, v = _on(kernel, *_inputs(batch=1, heads=2, tokens=17, dim=16, seed=6, dtype=dtype))
    output, matrix = fused.fused_layer(q, k, v, scale=0.25, rule="iv", head_mode="mean", kernel=kernel)
    expected_output, expected = _reference(q, k, v, 0.25, "iv", "mean")
    assert output.dtype == dtype and matrix.dtype == torch.float32
    torch.testing.assert_close(matrix.cpu().double(), expected, rtol=1e-5, atol=2e-7)
    resolution = torch.finfo(dtype).eps
    assert float((output.cpu().double() - expected_output).abs().max()) <= resolution * float(
        expected_output.abs().max()
    )


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("head_fusion", ["mean", "max", "min", None, "last_layer_per_head"])
def test_equals_the_unfused_path(kernel, head_fusion):
    """The matrix :func:`reduce_layer` keeps from the package's unfused kernels, for every head mode."""
    q, k, v = _inputs(batch=2, heads=3, tokens=21, dim=16, seed=7)
    scale = 0.25
    attention = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
    for is_last in (False, True):
        for rule in (RULE_I, RULE_II, RULE_III, RULE_IV):
            state = AttentionState(attention=attention.clone(), values=v)
            unfused = reduce_layer([kernels.redistribution(rule, state)], head_fusion, is_last, num_heads=3)
            qq, kk, vv = _on(kernel, q, k, v)
            _, matrix = fused.fused_layer(
                qq, kk, vv, scale=scale, rule=rule, head_mode=layer_mode(head_fusion, is_last), kernel=kernel
            )
            torch.testing.assert_close(matrix.cpu(), unfused, rtol=1e-5, atol=1e-6)


class _SubclassedWeight(AttentionWeight):
    """A user component: a subclass may change ``__call__``, so it is not the built-in weight."""


def test_only_builtin_rules_take_the_fused_path():
    assert [fused.rule_flags(rule) for rule in (RULE_I, RULE_II, RULE_III, RULE_IV)] == [
        (False, False),
        (False, True),
        (True, False),
        (True, True),
    ]
    custom = TokenRule(UnitActivation(), lambda state: state.attention + 1.0, name="custom")
    subclassed = TokenRule(UnitActivation(), _SubclassedWeight())
    assert fused.rule_flags(custom) is None and fused.rule_flags(subclassed) is None
    q, k, v = _inputs(batch=1, heads=2, tokens=5, dim=16)
    for rule in (custom, subclassed):
        result = kernels.fused_redistribution(rule, q, k, v, scale=0.25, head_mode="mean")
        assert result is None
        with pytest.raises(ValueError, match="built-in rules"):
            fused.fused_layer(q, k, v, scale=0.25, rule=rule, head_mode="mean", kernel="cpu")


def test_bad_arguments_say_what_was_expected():
    q, k, v = _inputs(batch=1, heads=2, tokens=5, dim=16)
    with pytest.raises(ValueError, match="head_mode must be one of"):
        fused.fused_layer(q, k, v, scale=0.25, rule="iv", head_mode="per_head", kernel="cpu")
    with pytest.raises(ValueError, match=r"\(batch, heads, N, head_dim\)"):
        fused.fused_layer(q, k[:, :, :4], v, scale=0.25, rule="iv", head_mode="mean", kernel="cpu")
    with pytest.raises(ValueError, match="score_bias must broadcast"):
        fused.fused_layer(q, k, v, scale=0.25, rule="iv", head_mode="mean", kernel="cpu", score_bias=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="No fused kernel"):
        fused.fused_layer(q, k, v, scale=0.25, rule="iv", head_mode="mean", kernel="metal")


@needs_cpu_kernel
def test_dispatch_on_the_cpu_uses_the_kernel():
    """Where the kernel builds, the CPU's backend is it and ``fused_redistribution`` returns its result."""
    assert fused.backend("cpu") == "cpu"
    q, k, v = _inputs(batch=2, heads=3, tokens=9, dim=16, seed=8)
    output, matrix = kernels.fused_redistribution(RULE_IV, q, k, v, scale=0.25, head_mode=None)
    expected_output, expected = _reference(q, k, v, 0.25, "iv", None)
    torch.testing.assert_close(matrix.double(), expected, rtol=1e-5, atol=2e-7)
    torch.testing.assert_close(output.double(), expected_output, rtol=1e-5, atol=1e-6)


@pytest.fixture
def fresh_cpu_state(monkeypatch):
    """An empty build cache of this process, restored afterwards (the built module is kept)."""
    monkeypatch.setattr(cpu, "_state", {})
    return monkeypatch


@pytest.mark.parametrize("why", ["no compiler", "switched off", "build fails"])
def test_fallback_without_the_cpu_kernel_says_so_once(fresh_cpu_state, caplog, why):
    if why == "no compiler":
        fresh_cpu_state.setattr(cpu, "_compiler", lambda: None)
    elif why == "switched off":
        fresh_cpu_state.setenv(cpu.SWITCH, "0")
    else:
        fresh_cpu_state.setattr(cpu, "_compiler", lambda: "/usr/bin/c++")

        def broken(**_kwargs):
            raise OSError("compiler crashed\nmore")

        import torch.utils.cpp_extension

        fresh_cpu_state.setattr(torch.utils.cpp_extension, "load_inline", broken)
    q, k, v = _inputs(batch=1, heads=2, tokens=5, dim=16)
    with caplog.at_level(logging.WARNING, logger="captum_tokenlrp"):
        assert fused.backend("cpu") is None
        assert kernels.fused_redistribution(RULE_IV, q, k, v, scale=0.25, head_mode="mean") is None
        assert fused.backend("cpu") is None
    lines = [record.getMessage() for record in caplog.records if record.name == "captum_tokenlrp"]
    assert len(lines) == 1 and "the unfused path runs" in lines[0] and "\n" not in lines[0]
    expected = {"no compiler": "no C++ compiler", "switched off": cpu.SWITCH, "build fails": "compiler crashed"}[why]
    assert expected in lines[0]
    with pytest.raises(RuntimeError, match="not available"):
        cpu.launch(q, k, v, None, None, None, by_distance=False, by_deviation=False, mode=0)


def test_triton_failure_turns_the_kernels_off_once(monkeypatch, caplog):
    """A GPU or Triton release the kernels cannot compile for: one line, then the unfused path for that device."""
    monkeypatch.setattr(fused, "_failed_devices", set())

    class Broken:
        @staticmethod
        def launch(*_args, **_kwargs):
            raise RuntimeError("PTX assembly failed\ndetails")

    tensor = torch.zeros(1)
    with caplog.at_level(logging.WARNING, logger="captum_tokenlrp"):
        with pytest.raises(fused.TritonFailed):
            fused._launch_triton(Broken, tensor, forced=False)
    lines = [record.getMessage() for record in caplog.records if record.name == "captum_tokenlrp"]
    assert len(lines) == 1 and "PTX assembly failed" in lines[0] and "unfused path runs" in lines[0]
    assert fused._failed_devices == {"cpu"}
    # Forced (as the tests force it), the error itself comes through.
    with pytest.raises(RuntimeError, match="PTX assembly failed"):
        fused._launch_triton(Broken, tensor, forced=True)
    # The engine's hookup takes the unfused path instead of raising.
    monkeypatch.setattr(fused, "backend", lambda device: "triton")

    def failing(*_args, **_kwargs):
        raise fused.TritonFailed("PTX assembly failed")

    monkeypatch.setattr(fused, "fused_layer", failing)
    q, k, v = _inputs(batch=1, heads=2, tokens=5, dim=16)
    assert kernels.fused_redistribution(RULE_IV, q, k, v, scale=0.25, head_mode="mean") is None


# ------------------------------------------------------------------ the attribution takes the fused kernels
@needs_cpu_kernel
@pytest.mark.parametrize("capture", ["fast", "exact"])
@pytest.mark.parametrize("head_fusion", ["mean", None, "last_layer_per_head"])
def test_token_relevance_takes_the_fused_kernel_and_agrees_with_the_unfused_path(capture, head_fusion, monkeypatch):
    """End to end on a DINO-shaped ViT: every layer's matrix comes from the fused kernel (counted), the
    relevance equals the unfused path's within float32 rounding, and under the fast capture the model's
    outputs during the call are its own within float32 rounding (the kernel's P @ V is what it gets)."""
    from transformers import ViTConfig, ViTModel

    from captum_tokenlrp import TokenRelevanceLRP
    from captum_tokenlrp._core import token_lrp

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8
    )
    model = ViTModel(config, add_pooling_layer=False).eval()
    pixels = torch.randn(2, 3, 32, 32)
    calls, outputs = [], []
    original = token_lrp.fused_redistribution

    def counted(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(result is not None)
        return result

    handle = model.register_forward_hook(lambda _m, _i, out: outputs.append(out.last_hidden_state.detach()))
    monkeypatch.setattr(token_lrp, "fused_redistribution", counted)
    fused_maps = TokenRelevanceLRP(model, "iv", attention_capture=capture, fused_kernels=True).token_relevance(
        pixels, head_fusion=head_fusion
    )
    assert calls == [True] * 3
    monkeypatch.setenv(cpu.SWITCH, "0")
    monkeypatch.setattr(cpu, "_state", {})
    switched_off = TokenRelevanceLRP(model, "iv", attention_capture=capture, fused_kernels=True)
    plain = switched_off.token_relevance(pixels, head_fusion=head_fusion)
    assert calls[3:] == [False] * 3  # the switch sends every layer down the unfused path
    monkeypatch.setattr(cpu, "_state", {})
    monkeypatch.delenv(cpu.SWITCH)
    turned_off = TokenRelevanceLRP(model, "iv", attention_capture=capture, fused_kernels=False)
    torch.testing.assert_close(turned_off.token_relevance(pixels, head_fusion=head_fusion), plain, rtol=0, atol=0)
    assert len(calls) == 6  # fused_kernels=False: the kernel is not asked
    default = TokenRelevanceLRP(model, "iv", attention_capture=capture).token_relevance(pixels, head_fusion=head_fusion)
    assert calls[6:] == [True] * 3  # on by default
    torch.testing.assert_close(default, fused_maps, rtol=0, atol=0)
    handle.remove()
    torch.testing.assert_close(fused_maps, plain, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        own = model(pixels).last_hidden_state
    torch.testing.assert_close(outputs[0], own, rtol=1e-4, atol=1e-5)


@needs_cpu_kernel
def test_an_overflowing_layer_is_still_named_with_the_fused_kernels(tiny_model, tiny_images):
    """Scores beyond float32 take the unfused path, whose non-finite matrix the error names (no silent map)."""
    from captum_tokenlrp import TokenRelevanceLRP

    lrp = TokenRelevanceLRP(tiny_model, fused_kernels=True)
    with torch.no_grad():  # layer 2's scores overflow: q . k = inf, softmax NaN
        lrp.attention_sites[2].query.weight.mul_(1e38)
    with pytest.raises(ValueError, match=r"non-finite in layer 2 \(0 = nearest the input\) of 3"):
        lrp.token_relevance(tiny_images)


