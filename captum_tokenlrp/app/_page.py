"""The Gradio page (:func:`build_app`) and the local server (:func:`launch`); no network access."""

from __future__ import annotations

import math
import re
import sys
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .._loading import CliError
from ..rules import available_rules
from ._explorer import HEAD_FUSIONS, SIZE_MODES, Capture, Explorer
from ._inputs import AppInputError, UnreadableUpload
from ._samples import bundled_samples
from ._settings import ViewSettings
from ._views import Views, render


def _start_token_from_box(text: object) -> int | None:
    """The "Start token" box's text as a token index: empty is None (where the model's output is read)."""
    if text is None or not str(text).strip():
        return None
    try:
        value = float(str(text).strip())
    except ValueError:
        value = math.nan
    if not value.is_integer():
        raise AppInputError(
            f"Start token {str(text).strip()!r} is not a token index: type an integer (negative ones count from "
            "the end, -1 the last token), or leave the box empty to start where the model's output is read."
        )
    return int(value)


def _gradio():
    try:
        import gradio
    except ImportError:
        raise CliError(
            "tokenlrp app needs Gradio, an optional dependency: pip install 'captum-tokenlrp[app]'."
        ) from None
    return gradio


@dataclass
class _Session:
    """What one browser session (a tab; a reload starts a new one) holds: the model it loaded, if any, the
    start token it last ran, and the folder of its downloads."""

    explorer: Explorer | None = None
    start_token: object = ""
    downloads: Path | None = None

    def __deepcopy__(self, memo) -> _Session:
        # Gradio copies the initial value into each new session: a fresh one, never a copy of a model.
        return _Session(self.explorer, self.start_token, self.downloads)


def _user_error(gr, message: str):
    """The message for the page, and one line (not a traceback) in the server's log: the user can fix it.

    Internal errors (anything but :class:`AppInputError` and a model that does not load) keep Gradio's
    full traceback.
    """
    print(f"tokenlrp app: {message}", file=sys.stderr, flush=True)
    try:
        return gr.Error(message, print_exception=False)
    except TypeError:  # a Gradio without print_exception
        return gr.Error(message)


def _image_box(gr, **options):
    """Gradio's image box, except that an upload it cannot decode reaches the handler as an
    :class:`UnreadableUpload` (so the page says what is wrong) instead of failing before it.

    The instance's ``preprocess`` is wrapped rather than the class subclassed: Gradio writes a ``.pyi``
    stub beside the module of every component subclass.
    """
    box = gr.Image(**options)
    decode = box.preprocess

    def preprocess(payload):
        try:
            return decode(payload)
        except Exception as error:  # any decoding failure: the page explains it, the app keeps running
            # Gradio's cache path means nothing to the user: name the file only.
            reason = re.sub(r"'[^']*/([^/']+)'", r"'\1'", str(error))
            return UnreadableUpload(f"{type(error).__name__}: {reason}")

    box.preprocess = preprocess
    return box


def build_app(explorer: Explorer, *, sample_dir: Path | None = None):
    """The Gradio page for ``explorer``.

    Parameters
    ----------
    explorer : Explorer
        The model side.
    sample_dir : Path, optional
        Where the bundled shapes samples are written (a temporary folder by default).

    Returns
    -------
    gradio.Blocks
    """
    gr = _gradio()
    sample_dir = Path(sample_dir or tempfile.mkdtemp(prefix="tokenlrp-samples-"))
    explorer.masks.update(bundled_samples(sample_dir))
    downloads = Path(tempfile.mkdtemp(prefix="tokenlrp-downloads-"))

    # The models the sessions hold, by the name they were loaded under: a second session asking for one gets the
    # same Explorer (one copy in memory; its caches are keyed by content, its lock serialises the work). Weak:
    # a model goes when the last session holding it does.
    models: weakref.WeakValueDictionary[str, Explorer] = weakref.WeakValueDictionary({explorer.name: explorer})

    def explorer_of(session: _Session) -> Explorer:
        """The model this browser session explains: the app's own until the session loads another."""
        return session.explorer if session.explorer is not None else explorer

    def heads_of(explorer: Explorer) -> list[str]:
        return ["fused"] + [f"head {index}" for index in range(explorer.num_heads)]

    def depth_label(explorer: Explorer) -> str:
        return f"Relevance entering layer l (0: the input tokens, {explorer.num_layers}: the start)"

    def settings_from(
        explorer: Explorer,
        rules,
        method,
        head_fusion,
        head,
        start_token,
        target_class,
        target_prompt,
        opacity,
        depth,
        size_mode,
    ):
        start = _start_token_from_box(start_token)
        return ViewSettings(
            rules=tuple(rules or ()),
            method=method,
            head_fusion=head_fusion,
            head=head,
            start_token=start,
            target=target_prompt if explorer.has_text else target_class,
            opacity=float(opacity),
            depth=int(depth),
            size_mode=size_mode,
        )

    def outputs_of(session: _Session, views: Views, capture: Capture, full: bool):
        stem = capture.key[:12]
        files = []
        if session.downloads is None:
            # One folder per session: files are named by the image, and another session may explain the same
            # image with another model or other choices at the same moment.
            session.downloads = Path(tempfile.mkdtemp(prefix="session-", dir=downloads))
        if full and views.figure is not None:
            figure_path = session.downloads / f"tokenlrp-{stem}-figure.png"
            views.figure.save(figure_path)
            files.append(str(figure_path))
        npz_path = session.downloads / f"tokenlrp-{stem}-relevance.npz"
        np.savez(npz_path, **views.arrays)
        files.append(str(npz_path))
        figure_out = views.figure if full else gr.skip()
        return (
            figure_out,
            views.overlay,
            views.layer_view,
            views.top_patches,
            views.predictions or None,
            views.mask,
            views.summary,
            files if full else gr.skip(),
            views.diagnostics,
        )

    def guarded(full: bool) -> Callable:
        def handler(session: _Session, image, size_mode, *choices):
            if image is None:
                return (None, None, None, [], None, None, "Upload an image or pick a bundled sample.", None, "")
            explorer = explorer_of(session)
            try:
                capture = explorer.capture(image, size_mode)
                views = render(explorer, capture, settings_from(explorer, *choices, size_mode), figure=full)
            except AppInputError as error:
                raise _user_error(gr, str(error)) from None
            return outputs_of(session, views, capture, full)

        return handler

    def on_start_token(session: _Session, image, size_mode, *choices):
        """Run when the start token is submitted (Enter) or left (blur), once per value: not on every keystroke."""
        start = choices[4]
        if start == session.start_token:  # Enter, then a click elsewhere: one run, one message
            return tuple(gr.skip() for _ in outputs)
        session.start_token = start
        return full(session, image, size_mode, *choices)

    def load_other(session: _Session, name: str):
        previous = explorer_of(session)
        other = models.get(name.strip())
        if other is None:
            try:
                other = Explorer(name.strip(), device=previous.device, dtype=previous.dtype)
            except (CliError, ValueError, TypeError) as error:
                raise _user_error(gr, f"Could not load {name!r}: {error}") from None
            models[name.strip()] = other
        other.masks.update(previous.masks)
        # This session's model only: the other sessions (tabs, users) keep theirs. The previous model of this
        # session is freed with its last reference; the app's own stays for the new sessions.
        session.explorer = other
        return (
            f"# Token relevance explorer\n{other.describe()}",
            gr.update(choices=other.methods, value="iv"),
            gr.update(choices=heads_of(other), value="fused"),
            gr.update(choices=["predicted", *other.class_names], value="predicted", visible=other.is_classifier),
            gr.update(visible=other.has_text),
            gr.update(maximum=other.num_layers, value=0, label=depth_label(other)),
            gr.update(visible=other.is_classifier),
        )

    with gr.Blocks(title="tokenlrp explorer", analytics_enabled=False) as app:
        # Gradio deep-copies a State's initial value into every new session (tab, reload): each starts on the
        # app's model and holds its own afterwards.
        session = gr.State(_Session())
        header = gr.Markdown(f"# Token relevance explorer\n{explorer.describe()}")
        with gr.Row():
            model_name = gr.Textbox(
                value=explorer.name,
                label="Model: 'bundled', a local checkpoint folder or a hub id",
                elem_id="model",
                scale=4,
            )
            load = gr.Button("Load model", elem_id="load-model", scale=1)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                image = _image_box(
                    gr,
                    type="pil",
                    label="Image",
                    sources=["upload", "clipboard"],
                    elem_id="image-input",
                    format="png",  # lossless: a sample set by the radio keeps its pixels (and its mask) height=280
                )
                # Radio buttons rather than gr.Examples, whose sample grid throws in the browser on the
                # Gradio 6 releases that transformers 4.x can install.
                sample_paths = {path.stem: path for path in sorted(sample_dir.glob("*.png"))}
                samples = gr.Radio(
                    list(sample_paths),
                    value=None,
                    label="Or a bundled shapes sample (its object mask is known)",
                    elem_id="samples",
                )
                size_mode = gr.Radio(
                    list(SIZE_MODES),
                    value="processor",
                    label="Image size",
                    elem_id="size-mode",
                    info="processor: resized and cropped as in training; native: own size, interpolated positions",
                )
                rules = gr.CheckboxGroup(
                    list(available_rules()),
                    value=["i", "ii", "iii", "iv"],
                    label="Rules in the figure",
                    elem_id="rules",
                )
                method = gr.Radio(explorer.methods, value="iv", label="Method of the overlay", elem_id="method")
                head_fusion = gr.Radio(list(HEAD_FUSIONS), value="mean", label="Head fusion", elem_id="fusion")
                head = gr.Radio(heads_of(explorer), value="fused", label="Head of the overlay", elem_id="head")
                # A text box, not gr.Number: an empty Number reaches the handler as 0, a token like any other.
                start_token = gr.Textbox(
                    value="",
                    placeholder="empty: where the model's output is read",
                    lines=1,
                    max_lines=1,
                    label="Start token (empty: where the model's output is read; -1: the last token)",
                    info="A token index; negative ones count from the end, as in Python and the API's target.",
                    elem_id="start-token",
                )
                target_class = gr.Dropdown(
                    ["predicted", *explorer.class_names],
                    value="predicted",
                    label="GAE target class",
                    elem_id="target-class",
                    visible=explorer.is_classifier,
                )
                target_prompt = gr.Textbox(
                    value="", label="GAE target: a text prompt", elem_id="target-prompt", visible=explorer.has_text
                )
                opacity = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Opacity", elem_id="opacity")
                depth = gr.Slider(
                    0,
                    explorer.num_layers,
                    value=0,
                    step=1,
                    elem_id="depth",
                    label=depth_label(explorer),
                )
            with gr.Column(scale=2):
                summary = gr.Markdown(elem_id="summary")
                diagnostics = gr.Markdown(elem_id="diagnostics")
                overlay = gr.Image(label="Overlay", show_label=False, elem_id="overlay", format="png")
                with gr.Row():
                    layer_view = gr.Image(label="Layer by layer", show_label=False, elem_id="layer-view", format="png")
                    mask = gr.Image(label="Object mask (bundled samples)", elem_id="mask", format="png")
                predictions = gr.Label(
                    label="Predicted classes",
                    num_top_classes=5,
                    visible=explorer.is_classifier,
                    elem_id="predictions",
                )
                top = gr.Dataframe(
                    headers=["rank", "token", "row", "col", "% of total"],
                    label="Top patches (% of the map's total relevance, as the colour bars)",
                    elem_id="top-patches",
                )
                figure = gr.Image(label="The paper's figure: rules x (fused, heads)", elem_id="figure", format="png")
                files = gr.File(label="Download: figure (PNG) and relevance (.npz)", file_count="multiple")
        choices = [rules, method, head_fusion, head, start_token, target_class, target_prompt, opacity, depth]
        outputs = [figure, overlay, layer_view, top, predictions, mask, summary, files, diagnostics]
        full, light = guarded(True), guarded(False)
        inputs = [session, image, size_mode, *choices]
        changed_by_load = [header, method, head, target_class, target_prompt, depth, predictions]
        load.click(load_other, [session, model_name], changed_by_load, show_progress="hidden").success(
            full, inputs, outputs
        )
        for component in (image, size_mode, rules, method, head_fusion, head, target_class):
            component.change(full, inputs, outputs)
        # A number being typed (9, 99, 999) is no start token yet: run on Enter or on leaving the box.
        # One queue for both (Enter, then a click elsewhere): the second sees the first's value and does nothing.
        start_token.submit(on_start_token, inputs, outputs, concurrency_id="start-token")
        start_token.blur(on_start_token, inputs, outputs, concurrency_id="start-token")
        target_prompt.submit(full, inputs, outputs)

        def pick_sample(name: str | None):
            if not name:
                return gr.skip()
            with Image.open(sample_paths[name]) as picked:
                return picked.convert("RGB")

        samples.change(pick_sample, samples, image)
        for component in (opacity, depth):
            component.release(light, inputs, outputs)
    return app


#: Gradio's browser client streams an upload's progress through its own fetch-based stand-in for EventSource,
#: whose ``close()`` is a stub that only prints ``console.warn("Method not implemented.")``; its upload widget
#: calls it twice per file (when the upload is done, and when the progress bar goes). Nothing fails, but two
#: warnings per upload bury the console messages that matter. The app cannot reach that object, so the page
#: drops exactly this message (nothing else) before Gradio's scripts run.
_QUIET_STUB_WARNING = """<script>
(function () {
  var warn = console.warn;
  console.warn = function () {
    if (arguments.length === 1 && arguments[0] === "Method not implemented.") { return; }
    return warn.apply(console, arguments);
  };
})();
</script>"""


def _theme(gr):
    """System fonts only: the default theme would fetch web fonts, and the app must need no network."""
    fonts = ["ui-sans-serif", "system-ui", "sans-serif"]
    return gr.themes.Default(font=fonts, font_mono=["ui-monospace", "monospace"])


def launch(
    model: str | Explorer = "bundled",
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    block: bool = True,
):
    """Load the model, build the page and serve it; prints the local URL.

    ``model`` is what :class:`Explorer` takes, or an :class:`Explorer` already built.

    Returns
    -------
    (gradio.Blocks, str)
        The running app and its URL (with ``block=False``; otherwise serves until interrupted).
    """
    gr = _gradio()
    explorer = model if isinstance(model, Explorer) else Explorer(model, device=device, dtype=dtype)
    app = build_app(explorer)
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        share=False,
        theme=_theme(gr),
        head=_QUIET_STUB_WARNING,
        max_file_size="50mb",
        footer_links=[],
        ssr_mode=False,
    )
    print(f"tokenlrp app: {explorer.name} at {url} (Ctrl+C to stop)", flush=True)
    if block:
        try:
            app.block_thread()
        finally:
            app.close()
    return app, url
