"""The line that points to the other kind of command when a checkpoint is of the other modality."""

from __future__ import annotations


def model_type_of(source: str) -> str | None:
    """The ``model_type`` of a checkpoint's configuration, from what is on disk or cached (no download)."""
    from transformers import AutoConfig

    try:
        return getattr(AutoConfig.from_pretrained(source, local_files_only=True), "model_type", None)
    except (OSError, ValueError):
        return None


def text_model_hint(source: str) -> str:
    """The hint " It is a text model: ..." where ``source`` is a checkpoint of a family the text commands explain."""
    from .._adapters.text import text_adapter_for_model_type

    model_type = model_type_of(source)
    if model_type and text_adapter_for_model_type(model_type) is not None:
        return f" It is a text model ({model_type}): explain texts with tokenlrp explain-text TEXT --model {source}."
    return ""


def image_model_hint(source: str) -> str:
    """The hint " It is an image model: ..." where ``source`` is a checkpoint of a family the image commands explain."""
    from .._adapters import adapter_class_for_model_type

    model_type = model_type_of(source)
    if model_type and adapter_class_for_model_type(model_type, "image") is not None:
        return f" It is an image model ({model_type}): explain images with tokenlrp explain IMAGE --model {source}."
    return ""
