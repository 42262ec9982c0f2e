"""Readable labels for a tokenizer's token strings, and fonts that draw them."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from .._utils.stack import user_stacklevel

_CONTINUES = "\u00b7"  # middle dot: the token continues the previous word


_MISSING_GLYPH = "\u25a1"  # white square: no installed font draws the character


_BYTE_LEVEL_MARKS = ("\u0120", "\u010a")  # GPT-2's space and newline, in its byte-to-character alphabet


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet back to bytes: printable bytes stand for themselves, the others for 256 + n."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    characters, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            characters[chr(byte)] = byte
        else:
            characters[chr(256 + extra)] = byte
            extra += 1
    return characters


def _is_special(token: str) -> bool:
    return (token.startswith("[") and token.endswith("]")) or (token.startswith("<") and token.endswith(">"))


def _rtl(label: str) -> str:
    """A right-to-left word (Hebrew, Arabic) in visual order: matplotlib draws characters left to right."""
    import unicodedata

    kinds = {unicodedata.bidirectional(character) for character in label}
    return label[::-1] if kinds & {"R", "AL"} and not kinds & {"L"} else label


def token_labels(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """Readable labels for a tokenizer's token strings, and the notes that explain their marks.

    Sub-word pieces are marked, not shown in the tokenizer's own code: a piece that continues the previous
    word gets a leading ``·`` (WordPiece's ``##ing``, a byte-level BPE piece without GPT-2's ``Ġ`` space,
    a SentencePiece piece without ``▁``); word-start markers are dropped; GPT-2's byte-level characters
    are decoded back to text (``Ċ`` is ``\n``, ``æĹ¥`` is 日); a space alone is ``␣``. Right-to-left words
    are reversed into visual order (matplotlib lays characters out left to right and does not join
    Arabic letters). Special tokens (``[CLS]``, ``<s>``) are kept as they are.

    Parameters
    ----------
    tokens : sequence of str
        ``lrp.tokens(input_ids)[0]``.

    Returns
    -------
    (list of str, list of str)
        One label per token, and a note per mark used (for the figure's legend line).
    """
    byte_level = any(mark in token for token in tokens for mark in _BYTE_LEVEL_MARKS)
    sentencepiece = not byte_level and any(token.startswith("\u2581") for token in tokens)
    wordpiece = not byte_level and not sentencepiece and any(t.startswith("##") and len(t) > 2 for t in tokens)
    decoder = _byte_decoder() if byte_level else {}
    labels, marked, previous_word = [], False, False
    for token in tokens:
        if _is_special(token):
            labels.append(token)
            previous_word = False
            continue
        text, starts_word = token, True
        if wordpiece and token.startswith("##") and len(token) > 2:
            text, starts_word = token[2:], False
        elif byte_level:
            if all(character in decoder for character in token):
                raw = bytes(decoder[character] for character in token)
                text = raw.decode("utf-8", errors="replace")
            starts_word = text[:1] in (" ", "\n", "") or not previous_word
            text = text.lstrip(" ") or text
        elif sentencepiece:
            starts_word = token.startswith("\u2581") or not previous_word
            text = token.lstrip("\u2581") or token
        continues = not starts_word and text[:1].isalnum()
        text = text.replace("\n", "\\n").replace("\t", "\\t")
        if text.strip() == "":
            text = "\u2423"
        text = _rtl(text)
        if continues:
            text, marked = _CONTINUES + text, True
        labels.append(text)
        previous_word = text[-1:].isalnum()
    notes = [f"{_CONTINUES}x: x continues the previous word (a sub-word piece)"] if marked else []
    return labels, notes


_FONT_CACHE: dict[str, Any] = {}


def _font_charmaps() -> list[tuple[str, frozenset[int]]]:
    """(family, code points) of every installed font matplotlib knows, read once per process."""
    if "charmaps" not in _FONT_CACHE:
        from matplotlib import font_manager
        from matplotlib.ft2font import FT2Font

        seen, charmaps = set(), []
        for entry in font_manager.fontManager.ttflist:
            # "Last Resort" fonts map every code point to a box: drawing with them hides that a glyph is missing.
            if entry.name in seen or entry.style != "normal" or "last resort" in entry.name.lower():
                continue
            try:
                codes = frozenset(FT2Font(entry.fname).get_charmap())
            except (OSError, RuntimeError, ValueError):
                continue
            seen.add(entry.name)
            charmaps.append((entry.name, codes))
        _FONT_CACHE["charmaps"] = charmaps
    return _FONT_CACHE["charmaps"]


def _label_fonts(labels: list[str]) -> tuple[list[str], list[str]]:
    """Font families that draw ``labels`` (the default first, then installed fallbacks that have the glyphs),
    and the labels with the characters no installed font has replaced by ``□``; one warning names those."""
    from matplotlib import font_manager, rcParams
    from matplotlib.ft2font import FT2Font

    default_path = font_manager.findfont(font_manager.FontProperties(family=rcParams["font.family"]))
    default_name = font_manager.FontProperties(fname=default_path).get_name()
    key = f"default:{default_path}"
    if key not in _FONT_CACHE:
        _FONT_CACHE[key] = frozenset(FT2Font(default_path).get_charmap())
    covered = _FONT_CACHE[key]
    wanted = {ord(c) for label in labels for c in label if ord(c) not in covered and not c.isspace()}
    families, missing = [default_name], set()
    if wanted:
        for name, codes in _font_charmaps():
            found = wanted & codes
            if found and name not in families:
                families.append(name)
                wanted -= found
        missing = wanted
    if missing:
        shown = "".join(sorted(chr(code) for code in missing)[:12])
        warnings.warn(
            f"No installed font draws {len(missing)} character(s) of the tokens ({shown!r}); they are drawn as "
            f"{_MISSING_GLYPH}. Install a font that has them (e.g. fonts-noto-cjk for Chinese and Japanese) "
            "and matplotlib finds it (after its font cache is rebuilt).",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
        labels = ["".join(_MISSING_GLYPH if ord(c) in missing else c for c in label) for label in labels]
    return families, labels
