"""``tokenlrp app``: the explorer's numbers (against the attribution itself), its caching, its messages,
and the page in a real browser (headless Chromium)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import seeded, tiny_config
from helpers import chrome_driver, free_port
from PIL import Image
from test_cli import save_checkpoint
from transformers import ViTModel

from captum_tokenlrp import TokenRelevanceLRP, app
from captum_tokenlrp.app import (
    AppInputError,
    Explorer,
    UnreadableUpload,
    ViewSettings,
    _figure,
    _inputs,
    _page,
    bundled_samples,
    render,
)
from captum_tokenlrp.baselines import GenericAttentionExplainability
from captum_tokenlrp.cli import main
from captum_tokenlrp.data.shapes import generate_shapes
from captum_tokenlrp.evaluation import relevance_mass
from captum_tokenlrp.images import map_to_original

RULES = ["i", "ii", "iii", "iv"]
MODES = ["mean", "max", "min", "per_head_mean", "last_layer_per_head", None]


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("samples")
    return folder, bundled_samples(folder)


@pytest.fixture(scope="module")
def bundled(samples) -> Explorer:
    explorer = Explorer("bundled")
    explorer.masks.update(samples[1])
    return explorer


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Explorer:
    """A tiny DINO-style backbone (no head) saved and loaded like a user's checkpoint."""
    model = seeded(lambda: ViTModel(tiny_config(), add_pooling_layer=False), trained_norms=True)
    return Explorer(str(save_checkpoint(tmp_path_factory.mktemp("tiny") / "vit", model, 32)))


def sample_image(samples, index: int = 0) -> Image.Image:
    return Image.open(sorted(samples[0].glob("*.png"))[index]).convert("RGB")


def counting_forwards(model: torch.nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    return calls, model.register_forward_hook(hook)


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_and_mode_equals_the_attribution_on_the_same_input(bundled, samples, rule):
    capture = bundled.capture(sample_image(samples))
    lrp = TokenRelevanceLRP(bundled.loaded.model, rule=rule)
    for mode in MODES:
        replayed = bundled.relevance_by_layer(capture, rule, mode)
        direct = lrp.token_relevance_by_layer(capture.pixel_values, head_fusion=mode)[0]
        torch.testing.assert_close(replayed, direct, atol=1e-6, rtol=1e-5)
        final = replayed[..., 0, :]
        torch.testing.assert_close(final, lrp.token_relevance(capture.pixel_values, head_fusion=mode)[0])


def test_the_download_follows_the_clis_npz_schema(bundled, samples):
    """The app's ``.npz`` names its maps as every command does (README: one schema): ``relevance_<rule>`` the
    map of the chosen head fusion, ``relevance_<rule>_per_head`` each head's, equal to the attribution's."""
    capture = bundled.capture(sample_image(samples))
    views = render(bundled, capture, ViewSettings(method="iv", rules=("i", "iv")))
    lrp = {rule: TokenRelevanceLRP(bundled.loaded.model, rule=rule) for rule in ("i", "iv")}
    for rule in ("i", "iv"):
        np.testing.assert_allclose(
            views.arrays[f"relevance_{rule}"], lrp[rule].token_relevance(capture.pixel_values)[0], atol=1e-6
        )
        per_head = lrp[rule].token_relevance(capture.pixel_values, head_fusion=None)[0]
        np.testing.assert_allclose(views.arrays[f"relevance_{rule}_per_head"], per_head, atol=1e-6)
    assert views.arrays["relevance_iv_by_layer"].shape[0] == bundled.num_layers + 1
    assert not [key for key in views.arrays if key.startswith("rule_")]


def test_a_start_token_on_a_backbone_is_the_one_hot_start(backbone, samples):
    capture = backbone.capture(sample_image(samples, 2))
    lrp = TokenRelevanceLRP(backbone.loaded.model, rule="iii")
    for token in (0, 5, capture.layout.num_tokens - 1):
        replayed = backbone.relevance_by_layer(capture, "iii", "mean", start_token=token)[0]
        torch.testing.assert_close(replayed, lrp.token_relevance(capture.pixel_values, target=token)[0])
    with pytest.raises(AppInputError, match="out of range"):
        backbone.relevance_by_layer(capture, "iii", "mean", start_token=capture.layout.num_tokens)


def test_negative_start_tokens_count_from_the_end_and_the_page_names_the_token(backbone, samples):
    """As the API's ``target`` (and Python): ``[-N, N)``, -1 the last token; the summary says which it is."""
    capture = backbone.capture(sample_image(samples, 2))
    count, layout = capture.layout.num_tokens, capture.layout
    for negative in (-1, -5, -count):
        replayed = backbone.relevance_by_layer(capture, "iii", "mean", start_token=negative)
        torch.testing.assert_close(replayed, backbone.relevance_by_layer(capture, "iii", "mean", count + negative))
    lrp = TokenRelevanceLRP(backbone.loaded.model, rule="ii")
    views = render(backbone, capture, ViewSettings(method="ii", start_token=-1))
    # Within float32 rounding, not bitwise: the live call's layers get the fused kernel's P @ V as their
    # output, the app's recorded forward (no rule yet) the unfused one.
    np.testing.assert_allclose(
        views.arrays["selected"], lrp.token_relevance(capture.pixel_values, target=-1)[0], rtol=1e-5, atol=1e-7
    )
    row, col = divmod(count - 1 - layout.num_special_tokens, layout.grid[1])
    assert f"Start: -1 = token {count - 1} (patch row {row}, col {col})." in views.summary
    first = render(backbone, capture, ViewSettings(start_token=0)).summary
    assert f"Start: token 0 ({layout.special_token_names[0]})." in first
    assert "Start: where the model's output is read." in render(backbone, capture, ViewSettings()).summary
    # -1 and N - 1 are one figure (one cache entry), drawn from the same start.
    assert render(backbone, capture, ViewSettings(start_token=count - 1)).figure is views.figure
    # The box's text: empty starts where the output is read, integers (also "-1", " 3 ") are tokens, else refused.
    boxes = ("", "  ", None, "-1", " 3 ", "7.0")
    assert [_page._start_token_from_box(text) for text in boxes] == [None] * 3 + [-1, 3, 7]
    for text in ("abc", "1.5", "-"):
        with pytest.raises(AppInputError, match=rf"Start token '{text}' is not a token index"):
            _page._start_token_from_box(text)
    for outside in (count, -count - 1):
        with pytest.raises(AppInputError, match=rf"Start token {outside} is out of range.*\[-{count}, {count}\)"):
            render(backbone, capture, ViewSettings(start_token=outside))


def test_changing_rule_head_layer_or_opacity_never_runs_the_model_again(bundled, samples):
    image = sample_image(samples, 1)
    calls, handle = counting_forwards(bundled.loaded.model)
    try:
        capture = bundled.capture(image)
        assert calls[0] == 1
        for settings in (
            ViewSettings(),
            ViewSettings(method="ii"),
            ViewSettings(method="i", head="head 3"),
            ViewSettings(head_fusion="max", rules=("i", "iv")),
            ViewSettings(head_fusion="last_layer_per_head", depth=4, opacity=0.2),
            ViewSettings(start_token=7),
        ):
            render(bundled, bundled.capture(image), settings)
        assert calls[0] == 1, "a view of the cached capture ran the model again"
        assert bundled.capture(image.copy()) is capture  # equal pixels, same capture
    finally:
        handle.remove()


def test_views_show_what_the_numbers_say(bundled, samples):
    image = sample_image(samples, 3)
    capture = bundled.capture(image)
    views = render(bundled, capture, ViewSettings(method="ii", depth=2))
    selected = bundled.relevance_by_layer(capture, "ii", "mean")[0]
    np.testing.assert_allclose(views.arrays["selected"], selected.numpy())
    # Top patches: the largest patch tokens, in order, with their share of the total.
    patches = selected[capture.layout.patch_slice]
    order = patches.argsort(descending=True)[:10].tolist()
    assert [row[1] - capture.layout.num_special_tokens for row in views.top_patches] == order
    assert views.top_patches[0][4] == pytest.approx(100 * float(patches.max() / selected.sum()), abs=0.01)
    # Mass on the object, from the sample's own mask, as the evaluation module computes it.
    _, masks, _ = generate_shapes(6, 1)
    assert np.array_equal(capture.mask, masks[3])
    original = map_to_original(
        selected[capture.layout.patch_slice].reshape(capture.layout.grid),
        capture.geometry,
        patch_size=capture.layout.patch_size,
    )
    mass = float(relevance_mass(original[None], torch.from_numpy(masks[3])[None])[0])
    assert f"**{mass:.3f}**" in views.summary
    # Predictions: the bundled classifier's softmax, best first, named by its labels.
    probabilities = capture.logits.softmax(-1)
    assert list(views.predictions.values()) == pytest.approx(sorted(probabilities.tolist(), reverse=True)[:5])
    assert next(iter(views.predictions)) == bundled.class_names[int(probabilities.argmax())]
    assert views.figure.size[0] > views.figure.size[1] > 100
    assert views.layer_view is not None and views.mask is not None


def test_gae_takes_the_class_by_name_and_is_cached(bundled, samples):
    capture = bundled.capture(sample_image(samples, 4))
    name = bundled.class_names[2]
    views = render(bundled, capture, ViewSettings(method="GAE", target=name))
    expected = GenericAttentionExplainability(bundled.loaded.model).token_relevance(capture.pixel_values, target=2)
    np.testing.assert_allclose(views.arrays["gae"], expected[0].numpy(), atol=1e-6, rtol=1e-5)
    predicted = render(bundled, capture, ViewSettings(method="GAE", target="predicted")).arrays["gae"]
    expected = GenericAttentionExplainability(bundled.loaded.model).token_relevance(
        capture.pixel_values, target=int(capture.logits.argmax())
    )
    np.testing.assert_allclose(predicted, expected[0].numpy(), atol=1e-6, rtol=1e-5)
    with pytest.raises(AppInputError, match="Unknown class"):
        render(bundled, capture, ViewSettings(method="GAE", target="unicorn"))


def test_native_size_runs_the_image_at_its_own_resolution(backbone):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 57, 3), dtype=np.uint8))
    capture = backbone.capture(image, "native")
    assert tuple(capture.pixel_values.shape[-2:]) == (40, 56)  # cut to whole 8-pixel patches
    assert capture.layout.grid == (5, 7)
    lrp = TokenRelevanceLRP(backbone.loaded.model, rule="iv")
    direct = lrp.token_relevance(capture.pixel_values, additional_forward_args={"interpolate_pos_encoding": True})
    torch.testing.assert_close(backbone.relevance_by_layer(capture, "iv", "mean")[0], direct[0])
    # The map on the original image keeps the patches' relevance (the cut border column gets none).
    original = backbone.original_map(capture, direct[0])
    assert original.shape == (40, 57)
    assert float(original.sum()) == pytest.approx(float(direct[0, 1:].sum()), rel=1e-5)
    assert float(original[:, 56:].abs().sum()) == 0.0


def test_bad_uploads_get_a_clear_message(bundled, tmp_path, monkeypatch):
    with pytest.raises(AppInputError, match="No image"):
        bundled.capture(None)
    with pytest.raises(AppInputError, match=r"not an image this app can read.*UnidentifiedImageError"):
        bundled.capture(UnreadableUpload("UnidentifiedImageError: cannot identify image file 'bad.png'"))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(AppInputError, match="Cannot read the upload"):
        bundled.capture(str(empty))
    with pytest.raises(AppInputError, match="Unknown image-size mode"):
        bundled.capture(Image.new("RGB", (8, 8)), "stretched")
    with pytest.raises(AppInputError, match="Head 9 does not exist"):
        render(bundled, bundled.capture(Image.new("RGB", (64, 64))), ViewSettings(head="head 9"))
    monkeypatch.setattr(_inputs, "MAX_PIXELS", 100)
    with pytest.raises(AppInputError, match=r"11 x 10 pixels, more than the app takes \(100\)"):
        bundled.capture(Image.new("RGB", (11, 10)))
    Image.new("RGB", (12, 10)).save(tmp_path / "big.png")
    with pytest.raises(AppInputError, match=r"12 x 10 pixels"):
        bundled.capture(str(tmp_path / "big.png"))


def test_a_non_finite_map_is_refused_not_drawn(samples):
    explorer = Explorer("bundled")
    capture = explorer.capture(sample_image(samples, 0))
    layer = capture.layers[2]
    capture.layers[2] = dataclasses.replace(layer, value=torch.full_like(layer.value, float("nan")))
    with pytest.raises(AppInputError, match="non-finite in layer 2"):
        render(explorer, capture, ViewSettings(method="iv"))


def test_parallel_handlers_give_the_results_of_sequential_ones(samples):
    """Gradio runs the handlers of different events in threads: the explorer serialises the model's work."""
    explorer = Explorer("bundled")
    images = [sample_image(samples, index) for index in range(6)]
    results: dict[int, np.ndarray] = {}

    def work(index: int) -> None:
        capture = explorer.capture(images[index])
        results[index] = render(explorer, capture, ViewSettings(method=RULES[index % 4])).arrays["selected"]

    threads = [threading.Thread(target=work, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, image in enumerate(images):
        lrp = TokenRelevanceLRP(explorer.loaded.model, rule=RULES[index % 4])
        expected = lrp.token_relevance(explorer.capture(image).pixel_values)[0]
        np.testing.assert_allclose(results[index], expected.numpy(), atol=1e-6, rtol=1e-5)
    hooks = sum(len(module._forward_hooks) for module in explorer.loaded.model.modules())
    assert hooks == 0


def test_the_model_is_left_as_found(bundled, samples):
    model = bundled.loaded.model
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    hooks = sum(len(module._forward_hooks) + len(module._forward_pre_hooks) for module in model.modules())
    implementation = model.config._attn_implementation
    render(bundled, bundled.capture(sample_image(samples, 5)), ViewSettings(method="GAE"))
    with pytest.raises(AppInputError):
        render(bundled, bundled.capture(sample_image(samples, 5)), ViewSettings(depth=99))
    assert all(torch.equal(state[name], tensor) for name, tensor in model.state_dict().items())
    assert sum(len(module._forward_hooks) + len(module._forward_pre_hooks) for module in model.modules()) == hooks
    assert model.config._attn_implementation == implementation
    assert all(parameter.grad is None for parameter in model.parameters())


def test_the_cli_says_how_to_install_gradio_when_it_is_missing(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_gradio(name, *args, **kwargs):
        if name == "gradio":
            raise ImportError("No module named 'gradio'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gradio)
    assert main(["app", "--model", "bundled"]) == 2
    assert "pip install 'captum-tokenlrp[app]'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- the browser
def image_source(driver, element_id: str) -> str | None:
    """The ``src`` of the image shown in the component ``element_id`` (None while it shows none)."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f"#{element_id} img")
    return found[0].get_attribute("src") if found else None


def wait_for_new_image(driver, element_id: str, before: str | None) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(lambda d: image_source(d, element_id) not in (None, before))
    return image_source(driver, element_id)


def choose_radio(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"#{element_id} input[type=radio][value='{value}']").click()


def radio_values(driver, element_id: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [radio.get_attribute("value") for radio in driver.find_elements(By.CSS_SELECTOR, f"#{element_id} input")]


def load_from_page(driver, name: str) -> None:
    """Type ``name`` into the model box and press "Load model"."""
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.CSS_SELECTOR, "#model textarea, #model input")
    box.clear()
    box.send_keys(name)
    # A JavaScript click: the previous error's toast may cover the button.
    driver.execute_script("arguments[0].click()", driver.find_element(By.ID, "load-model"))


def open_page(driver, url: str, upload: Path | None = None) -> None:
    """Open the app at ``url`` and (optionally) upload ``upload``, waiting until its views are drawn."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 60)
    driver.get(url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image-input input[type=file]"))
    if upload is not None:
        driver.find_element(By.CSS_SELECTOR, "#image-input input[type=file]").send_keys(str(upload))
        wait.until(lambda d: "Mass on the object" in d.find_element(By.ID, "summary").text)


def page_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def test_the_page_updates_on_upload_rule_and_head_in_headless_chromium(samples, backbone, tmp_path):
    pytest.importorskip("gradio", reason="the app's page needs Gradio (pip install -e '.[app]')")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chrome_driver()
    explorer = Explorer("bundled")  # its own: no capture cached by the other tests
    calls, handle = counting_forwards(explorer.loaded.model)
    server, url = app.launch(explorer, port=free_port(), block=False)
    try:
        assert url.startswith("http://127.0.0.1:")
        wait = WebDriverWait(driver, 60)
        driver.get(url)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image-input input[type=file]"))

        def source(element_id: str) -> str | None:
            return image_source(driver, element_id)

        def changed(element_id: str, before: str | None) -> str:
            return wait_for_new_image(driver, element_id, before)

        def choose(element_id: str, value: str) -> None:
            choose_radio(driver, element_id, value)

        upload = driver.find_element(By.CSS_SELECTOR, "#image-input input[type=file]")
        upload.send_keys(str(sorted(samples[0].glob("*.png"))[0]))
        overlay, figure = changed("overlay", None), changed("figure", None)
        wait.until(lambda d: "Mass on the object" in d.find_element(By.ID, "summary").text)
        forwards = calls[0]
        assert forwards == 1
        # The image's sinks and high-norm tokens are on the page (the capture's own findings; no other pass).
        found = explorer.capture(sorted(samples[0].glob("*.png"))[0]).diagnostics
        assert calls[0] == forwards and found is not None
        if found.sinks:
            top = max(found.sinks, key=lambda sink: sink.share)
            expected = f"{top.layer} {top.head} {top.token} = "  # the table's first row, as the page shows it
        else:
            expected = "High-norm tokens" if found.high_norm_tokens else "No attention sink"
        wait.until(lambda d: expected in d.find_element(By.ID, "diagnostics").text.replace("\n", " "))

        choose("method", "ii")
        overlay = changed("overlay", overlay)
        wait.until(lambda d: "rule (ii), mean" in d.find_element(By.ID, "summary").text)
        choose("head", "head 2")
        overlay = changed("overlay", overlay)
        wait.until(lambda d: "rule (ii), head 2" in d.find_element(By.ID, "summary").text)
        choose("fusion", "max")
        figure = changed("figure", figure)
        assert calls[0] == forwards, "changing the rule, head or fusion ran the model again"
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert severe == []

        # A bundled sample picked on the page: its mask is known, so the mass on the object is shown.
        driver.find_element(By.CSS_SELECTOR, "#samples input[type=radio][value='03-ring']").click()
        overlay = changed("overlay", overlay)
        wait.until(lambda d: "Mass on the object" in d.find_element(By.ID, "summary").text)
        assert calls[0] == forwards + 1

        # A file that is not an image: a message on the page, and the app goes on working.
        bad = tmp_path / "not-an-image.png"
        bad.write_text("plain text")
        driver.find_element(By.CSS_SELECTOR, "#image-input input[type=file]").send_keys(str(bad))
        wait.until(lambda d: "not an image this app can read" in d.find_element(By.TAG_NAME, "body").text)
        assert "not-an-image.png" in driver.find_element(By.TAG_NAME, "body").text
        driver.get(url)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image-input input[type=file]"))
        driver.find_element(By.CSS_SELECTOR, "#image-input input[type=file]").send_keys(
            str(sorted(samples[0].glob("*.png"))[1])
        )
        wait.until(lambda d: "Mass on the object" in d.find_element(By.ID, "summary").text)

        # Another model from the page: a name that does not load gets a message, a checkpoint folder loads.
        def load_model(name: str) -> None:
            load_from_page(driver, name)

        load_model(str(tmp_path / "no-such-model"))
        wait.until(lambda d: "Could not load" in d.find_element(By.TAG_NAME, "body").text)
        overlay = source("overlay")
        load_model(backbone.name)
        wait.until(lambda d: "ViTModel (backbone), 3 layers x 4 heads" in d.find_element(By.TAG_NAME, "body").text)
        heads = driver.find_elements(By.CSS_SELECTOR, "#head input[type=radio]")
        assert [radio.get_attribute("value") for radio in heads] == ["fused", "head 0", "head 1", "head 2", "head 3"]
        changed("overlay", overlay)  # the image on the page, explained by the new model
        wait.until(lambda d: "Mass on the object" in d.find_element(By.ID, "summary").text)
    finally:
        handle.remove()
        server.close()
        driver.quit()


def test_a_model_loaded_in_one_session_leaves_the_other_sessions_model(samples, backbone, monkeypatch):
    """Two tabs are two Gradio sessions: "Load model" in one changes that tab's model, and nothing in the other;
    their downloads never share a file."""
    pytest.importorskip("gradio", reason="the app's page needs Gradio (pip install -e '.[app]')")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    written: list[str] = []
    real_savez = np.savez

    def recording(path, *args, **kwargs):
        written.append(str(path))
        return real_savez(path, *args, **kwargs)

    monkeypatch.setattr(_page.np, "savez", recording)
    loads: list[str] = []

    class CountingExplorer(Explorer):
        def __init__(self, model, **options):
            loads.append(model)
            super().__init__(model, **options)

    driver = chrome_driver()
    server, url = app.launch(Explorer("bundled"), port=free_port(), block=False)
    monkeypatch.setattr(_page, "Explorer", CountingExplorer)  # the models loaded from the page from here on
    picture = sorted(samples[0].glob("*.png"))[0]
    bundled_header = "ViTForImageClassification (classifier), 6 layers x 6 heads"
    backbone_header = "ViTModel (backbone), 3 layers x 4 heads"
    try:
        wait = WebDriverWait(driver, 60)
        open_page(driver, url, picture)
        first = driver.current_window_handle
        driver.switch_to.new_window("tab")
        second = driver.current_window_handle
        open_page(driver, url, picture)
        # The same image in both: each session's relevance file is its own (one model's may not replace another's).
        assert len(written) == 2 and written[0] != written[1] and Path(written[0]).name == Path(written[1]).name

        driver.switch_to.window(first)
        overlay = image_source(driver, "overlay")
        load_from_page(driver, backbone.name)
        wait.until(lambda d: backbone_header in page_text(d))
        wait_for_new_image(driver, "overlay", overlay)
        assert radio_values(driver, "head") == ["fused", "head 0", "head 1", "head 2", "head 3"]

        # The other tab: still the bundled classifier, in its header, its heads, its figure and its classes.
        driver.switch_to.window(second)
        assert bundled_header in page_text(driver) and backbone_header not in page_text(driver)
        assert radio_values(driver, "head") == ["fused", *(f"head {index}" for index in range(6))]
        overlay = image_source(driver, "overlay")
        choose_radio(driver, "head", "head 5")  # a head the backbone does not have
        wait_for_new_image(driver, "overlay", overlay)
        wait.until(lambda d: "rule (iv), head 5" in d.find_element(By.ID, "summary").text)
        assert "does not exist" not in page_text(driver)
        predicted = driver.find_element(By.ID, "predictions").text
        assert sum(name in predicted for name in ("disc", "crescent", "triangle", "ring", "cross", "star")) >= 2

        # The first tab goes on with its own model; a reload is a new session, on the model the app started with.
        driver.switch_to.window(first)
        overlay = image_source(driver, "overlay")
        choose_radio(driver, "head", "head 3")
        wait_for_new_image(driver, "overlay", overlay)
        wait.until(lambda d: "rule (iv), head 3" in d.find_element(By.ID, "summary").text)
        assert backbone_header in page_text(driver)
        open_page(driver, url)
        assert bundled_header in page_text(driver)

        # The second tab asks for the model the first holds: the same one, not a second copy in memory.
        driver.switch_to.window(second)
        load_from_page(driver, backbone.name)
        wait.until(lambda d: backbone_header in page_text(d))
        assert loads == [backbone.name]
    finally:
        server.close()
        driver.quit()


def test_the_colour_bar_is_in_the_unit_of_the_top_patches(bundled, backbone, samples):
    """Both in percent of the map's total relevance per patch: the bar's top is the first row of the table."""
    odd = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 80, 3), dtype=np.uint8))
    cases = [(bundled, sample_image(samples, 2), "processor"), (backbone, odd, "processor"), (backbone, odd, "native")]
    for explorer, image, size_mode in cases:
        capture = explorer.capture(image, size_mode)
        for settings in (ViewSettings(method="iii"), ViewSettings(method="i", head="head 1")):
            views = render(explorer, capture, settings)
            low, high = views.colour_scale
            assert high == pytest.approx(views.top_patches[0][4], abs=0.006)
            assert 0 <= low <= views.top_patches[-1][4] + 0.006


def test_typing_a_start_token_runs_once_and_user_errors_log_one_line(samples, tmp_path, monkeypatch, capfd):
    """The start token runs on Enter or on leaving the box (not per keystroke); a user's mistake is one line in
    the server's log, not a traceback; and the page's console stays clean."""
    pytest.importorskip("gradio", reason="the app's page needs Gradio (pip install -e '.[app]')")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    starts: list[int | None] = []
    real_render = app.render

    def recording(explorer, capture, settings, **options):
        starts.append(settings.start_token)
        return real_render(explorer, capture, settings, **options)

    monkeypatch.setattr(_page, "render", recording)
    driver = chrome_driver()
    server, url = app.launch(Explorer("bundled"), port=free_port(), block=False)
    try:
        wait = WebDriverWait(driver, 60)
        open_page(driver, url, sorted(samples[0].glob("*.png"))[0])
        assert starts == [None]
        capfd.readouterr()
        box = driver.find_element(By.CSS_SELECTOR, "#start-token input")
        box.clear()
        box.send_keys("999")  # 9, 99, 999: no run while typing
        box.send_keys(Keys.ENTER)
        wait.until(lambda d: "Start token 999 is out of range" in page_text(d))
        driver.find_element(By.ID, "summary").click()  # leaving the box: the same value, no second run
        overlay = image_source(driver, "overlay")
        box.clear()
        box.send_keys("5")
        box.send_keys(Keys.TAB)
        wait_for_new_image(driver, "overlay", overlay)
        assert starts == [None, 999, 5]
        overlay = image_source(driver, "overlay")
        box.clear()
        box.send_keys("-1")  # counts from the end, as in Python: the last of the bundled model's 1 + 8 x 8 tokens
        box.send_keys(Keys.TAB)
        wait_for_new_image(driver, "overlay", overlay)
        assert starts == [None, 999, 5, -1]
        wait.until(lambda d: "Start: -1 = token 64 (patch row 7, col 7)." in page_text(d))
        load_from_page(driver, str(tmp_path / "no-such-model"))
        wait.until(lambda d: "Could not load" in page_text(d))
        # The failed load leaves the page as it was: its choices shown, not replaced by "Error" badges.
        badges = [driver.find_element(By.ID, box).text.count("Error") for box in ("head", "method", "predictions")]
        assert badges == [0, 0, 0]
        log = capfd.readouterr().err
        assert "Traceback" not in log
        lines = [line for line in log.splitlines() if "out of range" in line or "Could not load" in line]
        assert len(lines) == 2 and lines[0].startswith("tokenlrp app: Start token 999 is out of range"), log
        driver.save_screenshot(str(tmp_path / "app.png"))
        console = [entry["message"] for entry in driver.get_log("browser")]
        assert not [message for message in console if "Method not implemented" in message], console
    finally:
        server.close()
        driver.quit()


def test_an_attention_sink_is_named_marked_and_sets_no_colour_scale(tmp_path, samples):
    """A head built to send all its attention to one patch (the sink of tests/test_diagnostics.py): the page
    names it (layer, head, token, share) and its high-norm token, the .npz keeps them, the figure rings and
    crosses them, and the outlier patch it leaves in the maps is clipped instead of setting the colours."""
    from test_diagnostics import SINK_HEAD, SINK_TOKEN, build_sink, eager_tiny_model

    from captum_tokenlrp.diagnostics import diagnose
    from captum_tokenlrp.visualization import colour_scale

    explorer = Explorer(str(save_checkpoint(tmp_path / "sink", build_sink(eager_tiny_model()), 32)))
    calls, handle = counting_forwards(explorer.loaded.model)
    try:
        capture = explorer.capture(sample_image(samples, 2))
    finally:
        handle.remove()
    assert calls[0] == 1  # the diagnostics come from the capture's own forward pass
    direct = diagnose(explorer.loaded.model, capture.pixel_values)
    found = capture.diagnostics
    assert [(s.layer, s.head, s.token) for s in found.sinks] == [(s.layer, s.head, s.token) for s in direct.sinks]
    assert [s.share for s in found.sinks] == pytest.approx([s.share for s in direct.sinks], abs=1e-5)
    sink = next(s for s in found.sinks if s.layer == 0)
    assert (sink.head, sink.token) == (SINK_HEAD, SINK_TOKEN)
    views = render(explorer, capture, ViewSettings(method="iv"))
    assert "**Attention sinks**" in views.diagnostics and "**High-norm tokens**" in views.diagnostics
    assert f"| 0 | {SINK_HEAD} | {SINK_TOKEN} = patch (1, 1) | {100 * sink.share:.1f} % |" in views.diagnostics
    assert f"| {SINK_TOKEN} = patch (1, 1) | 0, 1, 2 |" in views.diagnostics
    np.testing.assert_allclose(views.arrays["diagnostics_sinks"], direct.as_arrays()["diagnostics_sinks"], atol=1e-5)
    assert views.arrays["diagnostics_high_norm"][:, 1].tolist() == [SINK_TOKEN] * 3

    # The overlay: the sink's patch holds far more than the others; the bar's top is the robust one, below it.
    selected = torch.from_numpy(views.arrays["selected"])
    percents = 100 * selected[capture.layout.patch_slice] / selected.sum()
    robust = colour_scale([percents.numpy()])
    assert robust.clipped and int(percents.argmax()) == SINK_TOKEN - 1
    assert views.colour_scale[1] == pytest.approx(robust.high, rel=1e-6)
    assert views.colour_scale[1] < views.top_patches[0][4] / 2  # the outlier no longer sets the top
    assert "clipped (drawn in the top colour, outlined in cyan)" in views.summary
    overlay = np.asarray(views.overlay)
    assert (overlay == app.CLIPPED_RGB).all(axis=-1).any()  # the clipped patch outlined

    # The figure: per row the robust scale, its clipped cells outlined; the sink ringed on its head's panel,
    # the high-norm token crossed on the image column, and both stated under the panels.
    figure = np.asarray(views.figure)
    for row, rule in enumerate(RULES):
        fused = explorer.relevance_by_layer(capture, rule, "mean")[0]
        heads = explorer.relevance_by_layer(capture, rule, None)[:, 0]
        maps = [m.reshape(4, 4).double().numpy() for m in (fused[1:], *heads[:, 1:])]
        scale = colour_scale(maps)
        for column, values in enumerate(maps, start=1):
            x, y = app.figure_panel_origin(row, column)
            for cell in zip(*np.nonzero(scale.outside(values)), strict=True):
                x0, y0, x1, y1 = app.figure_cell_box(x, y, 96, (4, 4), cell)
                assert tuple(figure[y0, x0]) == app.CLIPPED_RGB and tuple(figure[y1, x1]) == app.CLIPPED_RGB
        for head in range(4):  # a ring exactly on the cells where the head is a sink in some layer
            x, y = app.figure_panel_origin(row, 2 + head)
            for cell in np.ndindex(4, 4):
                x0, y0, x1, y1 = _figure._inset(app.figure_cell_box(x, y, 96, (4, 4), cell), 0.2)
                ring = figure[(y0 + y1) // 2 - 1 : (y0 + y1) // 2 + 2, x0 : x0 + 2]
                assert (ring == app.MARKER_RGB).all(axis=-1).any() == (cell in found.sink_cells(head)), (head, cell)
        x, y = app.figure_panel_origin(row, 0)
        x0, y0, x1, y1 = _figure._inset(app.figure_cell_box(x, y, 96, (4, 4), (1, 1)), 0.2)
        assert tuple(figure[y0 + 1, x0 + 1]) == app.MARKER_RGB  # the cross's stroke from the top left
    assert not (figure[: app.FIGURE_TOP] == app.CLIPPED_RGB).all(axis=-1).any()

    # A model without sinks says so in one line.
    plain = render(explorer, explorer.capture(sample_image(samples, 2)), ViewSettings())
    assert plain.diagnostics == views.diagnostics  # same capture, same findings
    assert app.diagnostics_markdown(dataclasses.replace(found, sinks=[], high_norm_tokens=[])).startswith(
        "No attention sink (a head whose queries send >= 50 % of their attention to one token)"
    )
