"""Text relevance as token heat-strips (:func:`plot_text_relevance`): a block per rule, a row per head."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from ._drawing import _COLORBAR_INCHES, _NOTE_INCHES, _colorbar, _scale_note
from ._maps import ArrayLike, _as_array
from ._scale import _CLIPPED_COLOUR, CLIP_PERCENTILE, colour_scale
from ._tokens import _label_fonts, token_labels

_TEXT_SCALES = ("row", "shared")


def _text_vector(value: object, name: str, num_tokens: int) -> np.ndarray:
    """Token relevance `(num_tokens,)` or a batch of one `(1, num_tokens)` -> `(num_tokens,)`."""
    array = _as_array(value, name)
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1 or array.shape[0] != num_tokens:
        raise ValueError(
            f"Expected {name} as token relevance (num_tokens,) for the {num_tokens} tokens given, got shape "
            f"{tuple(array.shape)}; index the batch first (relevance[0]), per-head maps go to per_head."
        )
    return array


def _text_heads(value: object, name: str, num_tokens: int) -> np.ndarray:
    """Per-head relevance `(num_heads, num_tokens)` or `(1, num_heads, num_tokens)` -> `(num_heads, num_tokens)`."""
    array = _as_array(value, name)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.shape[1] != num_tokens or array.shape[0] == 0:
        raise ValueError(
            f"Expected {name} as per-head relevance (num_heads, num_tokens) for the {num_tokens} tokens given, got "
            f"shape {tuple(array.shape)}; use token_relevance(..., head_fusion=None)[0]."
        )
    return array


#: Tokens per line of :func:`plot_text_relevance` before a text is wrapped.
LINE_TOKENS = 40


def plot_text_relevance(
    tokens: Sequence[str],
    fused: Mapping[str, ArrayLike],
    per_head: Mapping[str, ArrayLike] | None = None,
    *,
    token_mask: ArrayLike | None = None,
    scale: Literal["row", "shared"] = "row",
    cmap: str = "inferno",
    title: str | None = None,
    annotate: bool | None = None,
    cell_size: float = 0.42,
    line_tokens: int = LINE_TOKENS,
    heads: bool | None = None,
    clip: float | None = CLIP_PERCENTILE,
):
    """Token heat-strips of one text: one block per rule (or method), a row for the fused map and one per head.

    The text counterpart of :func:`plot_rule_grid`: rules x heads, each row a strip with one cell per token,
    the colour its relevance, the token strings under the strips (made readable by :func:`token_labels`,
    drawn with an installed font that has their glyphs). A text longer than ``line_tokens`` is wrapped
    into lines of that many tokens, so the figure's width is bounded; each line shows every block.

    Parameters
    ----------
    tokens : sequence of str
        The token strings (``lrp.tokens(input_ids)[0]``), padding included when ``token_mask`` drops it.
    fused : mapping of str to Tensor or ndarray
        Block label (e.g. ``"rule (iv)"``) -> fused relevance `(num_tokens,)` (or a batch of one, `(1, num_tokens)`).
    per_head : mapping of str to Tensor or ndarray, optional
        Block label (a key of ``fused``) -> per-head relevance `(num_heads, num_tokens)` (or `(1, num_heads,
        num_tokens)`), drawn as rows ``head 0`` .. (the heads axis' own index) under the block's ``fused`` row.
    token_mask : Tensor or ndarray, optional
        `(num_tokens,)`, 1 for real tokens (the ``attention_mask`` row): padding columns are left out.
    scale : {"row", "shared"}, default "row"
        Colour scales: ``"row"``, one per block (rule) with its own colour bar; ``"shared"``, one for the
        figure. Each spans its maps' minimum to maximum, the top clipped as ``clip`` says; a line under
        the blocks states the policy.
    cmap : str
        Matplotlib colour map of the relevance.
    title : str, optional
        Above the figure.
    annotate : bool, optional
        Write each cell's value in it; by default only for the fused rows of texts of at most 24 tokens.
    cell_size : float
        Cell width in inches (rows are about half as high).
    line_tokens : int, default 40
        Tokens per line; a longer text is wrapped.
    heads : bool, optional
        Draw the per-head rows of ``per_head``; by default only when the text fits on one line (a wrapped
        text shows the fused rows, and says so).
    clip : float or None, default 99
        Robust colour scales (see :func:`colour_scale`): one token ([CLS], [SEP]) cannot leave the others
        dark; clipped cells are outlined. ``None``: minimum to maximum.

    Returns
    -------
    matplotlib.figure.Figure
        Axes: one per block, top to bottom (a wrapped text: one per line), then the colour bars.
    """
    from matplotlib.figure import Figure

    if isinstance(tokens, str) or not isinstance(tokens, Sequence) or not all(isinstance(t, str) for t in tokens):
        raise TypeError(
            f"Expected tokens as a sequence of token strings (lrp.tokens(input_ids)[0]), got {type(tokens).__name__}."
        )
    if scale not in _TEXT_SCALES:
        raise ValueError(f"scale must be one of {_TEXT_SCALES}, got {scale!r}.")
    if isinstance(line_tokens, bool) or not isinstance(line_tokens, int) or line_tokens < 1:
        raise ValueError(f"line_tokens must be a positive int, got {line_tokens!r}.")
    if not fused:
        raise ValueError("fused is empty; pass at least one label -> fused relevance (num_tokens,).")
    per_head = dict(per_head or {})
    unknown = sorted(set(per_head) - set(fused))
    if unknown:
        raise ValueError(
            f"per_head has blocks that fused lacks: {unknown}; its keys must be keys of fused {list(fused)}."
        )
    num_tokens = len(tokens)
    if num_tokens == 0:
        raise ValueError("tokens is empty; there is nothing to draw.")
    keep = np.ones(num_tokens, dtype=bool)
    if token_mask is not None:
        mask = _as_array(token_mask, "token_mask").reshape(-1)
        if mask.shape[0] != num_tokens:
            raise ValueError(f"token_mask has {mask.shape[0]} entries for {num_tokens} tokens; pass the mask's row.")
        keep = mask != 0
        if not keep.any():
            raise ValueError("token_mask marks every token as padding; there is nothing to draw.")
    labels, label_notes = token_labels([token for token, kept in zip(tokens, keep, strict=True) if kept])
    families, labels = _label_fonts(labels)
    lines = -(-len(labels) // line_tokens)
    draw_heads = heads if heads is not None else lines == 1
    blocks: dict[str, tuple[np.ndarray, list[str]]] = {}
    for label in fused:
        rows = [_text_vector(fused[label], f"fused[{label!r}]", num_tokens)[None]]
        names = ["fused"]
        if label in per_head:
            head_rows = _text_heads(per_head[label], f"per_head[{label!r}]", num_tokens)
            if draw_heads:
                rows.append(head_rows)
                names += [f"head {h}" for h in range(head_rows.shape[0])]
        blocks[label] = (np.concatenate(rows)[:, keep], names)
    if annotate is None:
        annotate = len(labels) <= 24
    scales = {label: colour_scale([values], clip=clip) for label, (values, _) in blocks.items()}
    if scale == "shared":
        shared = colour_scale([values for values, _ in blocks.values()], clip=clip)
        scales = dict.fromkeys(blocks, shared)
    notes = [_scale_note(scale, len(blocks), "rule", any(s.clipped for s in scales.values()))]
    if per_head and not draw_heads:
        notes.append(f"per-head rows left out: the text is wrapped into {lines} lines (heads=True draws them)")
    notes += label_notes
    total_rows = sum(values.shape[0] for values, _ in blocks.values())
    label_inches = 0.08 * min(max(len(label) for label in labels), 16) + 0.3
    shown = min(len(labels), line_tokens)
    width = 1.1 + cell_size * shown + _COLORBAR_INCHES * (1 if scale == "shared" or lines == 1 else len(blocks))
    row_height = 0.55 * cell_size  # strips: flatter than wide, so rules x heads stays a page tall
    title_inches = 0.35 * (title.count("\n") + 1) if title else 0.0
    note_inches = _NOTE_INCHES * 0.6 * (1 + len(notes))
    if lines == 1:
        height = row_height * total_rows + 0.3 * len(blocks) + label_inches + note_inches + title_inches
    else:
        height = lines * (row_height * total_rows + label_inches + 0.25) + note_inches + title_inches
    figure = Figure(figsize=(max(width, 4.0), height), layout="constrained")
    label_style = {"fontsize": 8, "rotation": 90, "fontfamily": families}
    if lines == 1:
        _text_blocks_one_line(figure, blocks, scales, labels, label_style, cmap, annotate, scale)
    else:
        _text_blocks_wrapped(figure, blocks, scales, labels, label_style, cmap, line_tokens, scale)
    figure.supxlabel("\n".join(notes), fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def _outline_text_cells(axis, outside: np.ndarray, row_offset: float = 0.0) -> None:
    """Outline clipped cells of a heat-strip (rows x tokens, cell (r, c) centred on (c, r + row_offset))."""
    from matplotlib.patches import Rectangle

    for row, col in zip(*np.nonzero(outside), strict=True):
        axis.add_patch(
            Rectangle((col - 0.5, row + row_offset - 0.5), 1, 1, fill=False, edgecolor=_CLIPPED_COLOUR, linewidth=1)
        )


def _text_blocks_one_line(figure, blocks, scales, labels, label_style, cmap, annotate, scale) -> None:
    """One axes per block (its rows x the tokens), token labels under the last, a colour bar per block."""
    axes = figure.subplots(
        len(blocks), 1, squeeze=False, gridspec_kw={"height_ratios": [v.shape[0] for v, _ in blocks.values()]}
    )[:, 0]
    drawn = None
    for index, (axis, (label, (values, names))) in enumerate(zip(axes, blocks.items(), strict=True)):
        limits = scales[label]
        drawn = axis.imshow(
            values, cmap=cmap, vmin=limits.low, vmax=limits.high, aspect="auto", interpolation="nearest"
        )
        if limits.clipped:
            _outline_text_cells(axis, limits.outside(values))
        axis.set_yticks(range(len(names)), labels=names, fontsize=7)
        if len(names) > 1:  # set the fused row apart from the heads
            axis.axhline(0.5, color="white", linewidth=2)
        axis.set_title(label, fontsize=9, loc="left")
        last = index == len(blocks) - 1
        axis.set_xticks(range(len(labels)), labels=labels if last else [], **label_style)
        if annotate:
            middle = (limits.low + limits.high) / 2
            for column, value in enumerate(values[0]):
                axis.text(
                    column,
                    0,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="black" if value > middle else "white",
                )
        if scale == "row":
            _colorbar(figure, drawn, axis, limits.extend)
    if scale == "shared":
        _colorbar(figure, drawn, list(axes), next(iter(scales.values())).extend)


def _text_blocks_wrapped(figure, blocks, scales, labels, label_style, cmap, line_tokens, scale) -> None:
    """One axes per line of ``line_tokens`` tokens, every block's rows stacked in it (each on its own scale),
    a colour bar per block (labelled with its name) beside all the lines."""
    lines = -(-len(labels) // line_tokens)
    axes = figure.subplots(lines, 1, squeeze=False)[:, 0]
    first_drawn: dict[str, Any] = {}
    for line, axis in enumerate(axes):
        start, stop = line * line_tokens, min((line + 1) * line_tokens, len(labels))
        offset, ticks, names_all = 0, [], []
        for label, (values, names) in blocks.items():
            limits = scales[label]
            part = values[:, start:stop]
            rows = part.shape[0]
            drawn = axis.imshow(
                part,
                cmap=cmap,
                vmin=limits.low,
                vmax=limits.high,
                aspect="auto",
                interpolation="nearest",
                extent=(-0.5, stop - start - 0.5, offset + rows - 0.5, offset - 0.5),
            )
            first_drawn.setdefault(label, drawn)
            if limits.clipped:
                _outline_text_cells(axis, limits.outside(part), offset)
            ticks += [offset + r for r in range(rows)]
            names_all += [label if r == 0 else names[r] for r in range(rows)]
            offset += rows
            if offset < sum(v.shape[0] for v, _ in blocks.values()):
                axis.axhline(offset - 0.5, color="white", linewidth=1.5)
        axis.set_xlim(-0.5, line_tokens - 0.5)
        axis.set_ylim(offset - 0.5, -0.5)
        axis.set_yticks(ticks, labels=names_all, fontsize=7)
        axis.set_xticks(range(stop - start), labels=labels[start:stop], **label_style)
        axis.set_title(f"tokens {start}-{stop - 1}", fontsize=8, loc="left")
        for side in ("top", "right"):
            axis.spines[side].set_visible(False)
    if scale == "shared":
        _colorbar(figure, next(iter(first_drawn.values())), list(axes), next(iter(scales.values())).extend)
        return
    # Constrained layout puts each new bar outside the previous ones: reversed, the first block's bar is nearest.
    for label, drawn in reversed(first_drawn.items()):
        bar = figure.colorbar(drawn, ax=list(axes), fraction=0.03, pad=0.01, aspect=40, extend=scales[label].extend)
        bar.ax.tick_params(labelsize=6)
        bar.set_label(label, fontsize=7)
