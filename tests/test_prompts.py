"""Image-text models explained against text prompts: a map per prompt, the similarity as the explained
scalar for the class-sensitive methods (checked against Chefer's GAE written out on the eager model's own
attention), the image's own start for the class-agnostic rules, and clear errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from families import build, eager_copy, text_inputs

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp.baselines import GenericAttentionExplainability, TokenGradCAM, TokenIntegratedGradients


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def gae_on_similarity_reference(model, images, text, prompt):
    """GAE from the paper with the eager model's own attention probabilities and their gradients,
    explaining ``logits_per_image[:, prompt]``; the start is CLS for CLIP."""
    eager = eager_copy(model, torch.float32)
    output = eager(pixel_values=images, **text, output_attentions=True)
    attentions = output.vision_model_output.attentions
    gradients = torch.autograd.grad(output.logits_per_image[:, prompt].sum(), attentions)
    n = attentions[0].shape[-1]
    maps = []
    for b in range(len(images)):
        r = torch.eye(n, dtype=torch.float64)
        for attention, gradient in zip(attentions, gradients, strict=True):
            cam = (gradient[b].double() * attention[b].double()).clamp(min=0).mean(0)
            r = r + cam @ r
        maps.append(r[0])
    return torch.stack(maps)


def test_gae_explains_the_similarity_to_each_prompt(images):
    model, _ = build("CLIPModel")
    text = text_inputs(3)
    ours = GenericAttentionExplainability(model).token_relevance(images, target=text)
    assert ours.shape == (2, 3, 17)
    for prompt in range(3):
        expected = gae_on_similarity_reference(model, images, text, prompt)
        torch.testing.assert_close(ours[:, prompt].double(), expected, atol=2e-5, rtol=1e-4)
    assert float((ours[:, 0] - ours[:, 1]).abs().max()) > 1e-3  # the prompt matters


@pytest.mark.parametrize("name", ["CLIPModel", "SiglipModel"])
def test_class_agnostic_rules_give_the_image_map_for_every_prompt(name, images):
    model, _ = build(name)
    lrp = TokenRelevanceLRP(model, rule="iv")
    plain = lrp.token_relevance(images)
    with pytest.warns(UserWarning, match="class-agnostic") as caught:
        per_prompt = lrp.token_relevance(images, target=text_inputs(2))
        lrp.token_relevance(images, target=text_inputs(2))
    assert len([w for w in caught if "class-agnostic" in str(w.message)]) == 1
    assert per_prompt.shape == (2, 2, plain.shape[-1])
    for prompt in range(2):
        torch.testing.assert_close(per_prompt[:, prompt], plain, rtol=0, atol=0)


class WordTokenizer:
    """A stand-in tokenizer: one id per word (the tiny text towers know 64 ids), BOS and EOS around."""

    def __call__(self, texts, padding=True, return_tensors="pt"):
        rows = [[62, *[1 + sum(map(ord, word)) % 61 for word in text.split()], 63] for text in texts]
        width = max(map(len, rows))
        ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def test_prompt_strings_use_the_attributions_tokenizer(images):
    model, _ = build("CLIPModel")
    gae = GenericAttentionExplainability(model)
    with pytest.raises(TypeError, match=r"set the attribution's tokenizer first"):
        gae.token_relevance(images, target=["a photo of a cat"])
    gae.tokenizer = WordTokenizer()
    texts = ["a photo of a cat", "a photo of a dog"]
    by_strings = gae.token_relevance(images, target=texts)
    by_ids = gae.token_relevance(images, target=WordTokenizer()(texts))
    torch.testing.assert_close(by_strings, by_ids)
    torch.testing.assert_close(gae.token_relevance(images, target="a photo of a cat"), by_ids[:, :1])
    built_with = GenericAttentionExplainability(model, tokenizer=WordTokenizer())
    torch.testing.assert_close(built_with.token_relevance(images, target=texts), by_strings)


def test_attribute_takes_one_prompt(images):
    model, _ = build("CLIPModel")
    text = text_inputs(2)
    one = {key: value[1:] for key, value in text.items()}
    cam = TokenGradCAM(model)
    pixels = cam.attribute(images, target=one)
    assert pixels.shape == images.shape
    expected = cam.token_relevance(images, target=text)[:, 1, 1:].reshape(2, 4, 4)
    torch.testing.assert_close(pixels[:, 0, ::8, ::8] * 3 * 64, expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="got 2 prompts"):
        cam.attribute(images, target=text)
    ig, delta = TokenIntegratedGradients(model, n_steps=8).attribute(images, target=one, return_convergence_delta=True)
    assert ig.shape == images.shape and delta.shape == (2,)


def test_prompts_need_an_image_text_model(images):
    model, _ = build("CLIPVisionModel")
    with pytest.raises(TypeError, match="need an image-text model"):
        GenericAttentionExplainability(model).token_relevance(images, target=text_inputs(2))


def test_siglip_gae_starts_at_its_pooling_attention(images):
    from families import siglip_pooling_attention

    model, _ = build("SiglipVisionModel")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random-init embedding score may vanish; the start is what is tested
        gae = GenericAttentionExplainability(model)
        relevance = gae.token_relevance(images)
    assert relevance.shape == (2, 16)
    # GAE adds the identity, so the start's own weights are the floor of the map.
    assert bool((relevance.double() >= siglip_pooling_attention(model, images) - 1e-6).all())


def character_tokenizer(folder):
    """A real CLIPTokenizer, offline: one token per letter (a hand-made byte-level BPE vocabulary
    without merges), BOS/EOS at the tiny text tower's ids 62/63."""
    import json
    import string

    from transformers import CLIPTokenizer

    vocab = {letter: index for index, letter in enumerate(string.ascii_lowercase)}
    vocab.update({f"{letter}</w>": 26 + index for index, letter in enumerate(string.ascii_lowercase)})
    vocab.update({"<|startoftext|>": 62, "<|endoftext|>": 63})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def test_cli_explains_an_image_against_prompts(tmp_path, images):
    import numpy as np
    from PIL import Image
    from transformers import CLIPImageProcessor

    from captum_tokenlrp.cli import main

    model, _ = build("CLIPModel")
    checkpoint = tmp_path / "clip"
    model.save_pretrained(checkpoint)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(checkpoint)
    tokenizer = character_tokenizer(tmp_path)
    tokenizer.save_pretrained(checkpoint)
    picture = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(picture)
    prompts = ["a cat", "a dog"]
    out = tmp_path / "out"
    assert (
        main(
            [
                "explain",
                str(picture),
                "--model",
                str(checkpoint),
                "--out",
                str(out),
                "--rules",
                "iv",
                "--prompts",
                *prompts,
            ]
        )
        == 0
    )
    saved = np.load(out / "picture.png.npz")
    assert list(saved["prompts"]) == prompts and saved["prompt_gae"].shape == (2, 17)
    assert (out / "picture.png.prompts.png").stat().st_size > 5_000
    pixel_values = processor(images=Image.open(picture), return_tensors="pt")["pixel_values"]
    gae = GenericAttentionExplainability(model)
    expected = gae.token_relevance(pixel_values, target=tokenizer(prompts, padding=True, return_tensors="pt"))
    np.testing.assert_allclose(saved["prompt_gae"], expected[0].numpy(), atol=1e-6)
    lrp = TokenRelevanceLRP(model, rule="iv").token_relevance(pixel_values)
    np.testing.assert_allclose(saved["relevance_iv"], lrp[0].numpy(), atol=1e-6)


def test_cli_prompts_need_an_image_text_model(tmp_path, capsys):
    from transformers import CLIPImageProcessor

    from captum_tokenlrp.cli import main

    model, _ = build("CLIPVisionModel")
    model.save_pretrained(tmp_path / "vision")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "vision"
    )
    assert (
        main(["explain", "--model", str(tmp_path / "vision"), "--out", str(tmp_path / "o"), "--prompts", "a cat"]) == 2
    )
    assert "--prompts needs an image-text model" in capsys.readouterr().err


def test_explain_image_maps_one_prompt_onto_the_photo(tmp_path):
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPProcessor

    from captum_tokenlrp.images import explain_image

    model, _ = build("CLIPModel")
    tokenizer = character_tokenizer(tmp_path)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    photo = Image.fromarray((torch.rand(40, 48, 3, generator=torch.Generator().manual_seed(5)) * 255).byte().numpy())
    gae = GenericAttentionExplainability(model)
    gae.tokenizer = tokenizer
    explanation = explain_image(gae, photo, processor, target="a cat")
    assert explanation.original_map.shape == (40, 48) and explanation.head_maps is None
    expected = gae.token_relevance(explanation.pixel_values, target="a cat")[0, 0]
    torch.testing.assert_close(explanation.token_relevance, expected)
    with pytest.raises(ValueError, match="returns one map per image, got 2 prompts"):
        explain_image(gae, photo, processor, target=["a cat", "a dog"])
