"""Loading for the command line and the app: a model with its image processor or tokenizer, its identity for
a run's manifest, a classifier's prediction, and :class:`CliError` for what the user can fix.

A service layer above the engine (it reads the adapters, the baselines and the bundled models), so it lives
beside the commands that use it rather than under ``_utils``, which holds only low-level helpers.
"""

from .errors import CliError
from .image_models import LoadedModel, forward_options, load_model, preprocess, prompt_explainer
from .names import DTYPES, MINILM
from .predictions import class_name, keep_logits, prediction, prediction_arrays, target_class
from .quiet import quiet_transformers
from .text_models import LoadedTextModel, encode_texts, load_text_model, text_model_class

__all__ = [
    "DTYPES",
    "MINILM",
    "CliError",
    "LoadedModel",
    "LoadedTextModel",
    "class_name",
    "encode_texts",
    "forward_options",
    "keep_logits",
    "load_model",
    "load_text_model",
    "prediction",
    "prediction_arrays",
    "preprocess",
    "prompt_explainer",
    "quiet_transformers",
    "target_class",
    "text_model_class",
]
