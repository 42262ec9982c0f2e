"""Sanity check: do the maps depend on what the model learnt? (Adebayo et al. 2018)

The model-parameter randomisation test replaces the parameters of a copy of the model with
random values, cascading from the output side down (the head, then the Transformer blocks from
the last to the first, then the embeddings), and after each stage compares the method's maps
with the maps of the intact model by Spearman rank correlation. A method that explains the
model should see its maps decorrelate as more of the model is randomised; a method whose maps
stay the same explains the input, not the model, and fails.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._adapters import adapter_for


@dataclass(frozen=True)
class RandomizationResult:
    """Rank correlation of each randomisation stage's maps with the intact model's.

    Attributes
    ----------
    stages : tuple of str
        Cumulative stages, e.g. ``("head", "layer 11", ..., "layer 0", "embeddings")``: stage
        ``k`` has every group up to and including ``stages[k]`` randomised.
    spearman : Tensor
        `(num_stages, batch_size)` Spearman correlation per stage and image.
    """

    stages: tuple[str, ...]
    spearman: Tensor

    def mean(self) -> dict[str, float]:
        """Mean correlation over images, per stage."""
        return dict(zip(self.stages, self.spearman.mean(dim=1).tolist(), strict=True))


def average_ranks(values: Tensor) -> Tensor:
    """Ranks along the last dimension, ties sharing the mean of their ranks (as Spearman's rho needs).

    `(batch, n)` -> float64 `(batch, n)` with ranks 0 .. n - 1.
    """
    values = values.double()
    order = values.argsort(dim=-1, stable=True)
    ranks = torch.empty_like(values)
    for row in range(values.shape[0]):
        sorted_values = values[row, order[row]]
        _, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).double()
        mean_rank = ends - (counts.double() + 1) / 2  # ranks start-1 .. end-1 of each tie group
        ranks[row, order[row]] = mean_rank[inverse]
    return ranks


def spearman(first: Tensor, second: Tensor) -> Tensor:
    """Spearman rank correlation of `(batch, ...)` maps, image by image -> `(batch,)`.

    Pearson correlation of the average ranks; 0 where a map is constant (no ranking to compare).
    """
    if first.shape != second.shape:
        raise ValueError(
            f"maps to compare must have the same shape, got {tuple(first.shape)} and {tuple(second.shape)}."
        )
    a, b = average_ranks(first.flatten(1)), average_ranks(second.flatten(1))
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    denominator = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(denominator > 0, (a * b).sum(dim=1) / denominator.clamp_min(1e-300), 0.0).float()


def cascade_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The default cascade for a supported HuggingFace ViT: `(stage name, parameter names)`, output side first.

    ``"head"`` holds every parameter outside the Transformer blocks and the embeddings (the
    classifier and the final LayerNorm), then one stage per block from the last, then
    ``"embeddings"`` (patch projection, special tokens, position embeddings).
    """
    adapter = adapter_for(model)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    blocks = adapter.transformer_blocks()
    embeddings = getattr(adapter.backbone, "embeddings", None)

    def owned(module: nn.Module) -> list[str]:
        return [names[id(parameter)] for parameter in module.parameters()]

    block_stages = [(f"layer {index}", owned(block)) for index, block in enumerate(blocks)]
    embedding_names = owned(embeddings) if embeddings is not None else []
    claimed = {name for _, stage in block_stages for name in stage} | set(embedding_names)
    head = [name for name, _ in model.named_parameters() if name not in claimed]
    stages = [("head", head), *reversed(block_stages)]
    if embedding_names:
        stages.append(("embeddings", embedding_names))
    return [(stage, parameter_names) for stage, parameter_names in stages if parameter_names]


@torch.no_grad()
def _randomise(model: nn.Module, parameter_names: Sequence[str], generator: torch.Generator) -> None:
    parameters = dict(model.named_parameters())
    for name in parameter_names:
        parameter = parameters[name]
        values = parameter.detach().float().cpu()
        spread = values.std().item() if values.numel() > 1 else 0.0
        # A tensor without spread (an untrained LayerNorm scale) would stay as it is; give it some.
        spread = spread if spread > 0 else 0.02 * max(1.0, abs(values.mean().item()))
        noise = torch.randn(values.shape, generator=generator) * spread + values.mean()
        parameter.copy_(noise.to(parameter))


def parameter_randomization_test(
    model: nn.Module,
    explain: Callable[[nn.Module, Tensor], Tensor | tuple[Tensor]],
    inputs: Tensor,
    *,
    stages: Sequence[tuple[str, Sequence[str]]] | None = None,
    seed: int = 0,
) -> RandomizationResult:
    """Cascading model-parameter randomisation (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

    Parameters
    ----------
    model : nn.Module
        The trained model. It is never modified: the test randomises a deep copy.
    explain : callable
        ``explain(model, inputs)`` returns the maps to test, `(batch_size, ...)` (any trailing
        shape; a 1-tuple as Captum returns is accepted), e.g.
        ``lambda m, x: TokenRelevanceLRP(m).token_relevance(x)``. It is called on the copy.
    inputs : Tensor
        ``pixel_values`` `(batch_size, channels, height, width)`.
    stages : sequence of (name, parameter names), optional
        Output side first; each stage's parameters are randomised on top of the previous
        stages'. Default: :func:`cascade_stages` (head, blocks from the last, embeddings).
    seed : int
        Seed of the random parameters: every parameter is replaced by Gaussian noise with the
        original tensor's mean and standard deviation.

    Returns
    -------
    RandomizationResult
        Spearman correlation `(num_stages, batch_size)` between the intact model's maps and each stage's.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if not callable(explain):
        raise TypeError(f"explain must be a callable explain(model, inputs) -> maps, got {type(explain).__name__}.")
    stages = cascade_stages(model) if stages is None else [(name, list(names)) for name, names in stages]
    known = dict(model.named_parameters())
    for name, parameter_names in stages:
        unknown = [parameter for parameter in parameter_names if parameter not in known]
        if unknown:
            raise ValueError(f"Stage {name!r} names parameters the model does not have: {unknown[:3]}.")

    def maps(of: nn.Module) -> Tensor:
        result = explain(of, inputs)
        result = result[0] if isinstance(result, tuple) and len(result) == 1 else result
        if not isinstance(result, Tensor) or result.shape[0] != inputs.shape[0]:
            raise ValueError("explain(model, inputs) must return a tensor with one map per image.")
        return result.detach().float().cpu()

    original = maps(model)
    randomised = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    correlations = []
    for _, parameter_names in stages:
        _randomise(randomised, parameter_names, generator)
        correlations.append(spearman(original, maps(randomised)))
    return RandomizationResult(tuple(name for name, _ in stages), torch.stack(correlations))
