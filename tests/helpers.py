"""Model builders shared by several test modules (seeded random-init models of every family)."""

from __future__ import annotations

import os
import shutil
import socket

import pytest
import torch
import transformers
from conftest import TINY, seeded
from transformers import (
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    DeiTModel,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
)

from captum_tokenlrp.rules import AttentionWeight

SMALL = TINY

# name -> (factory, special tokens)
FAMILIES = {
    "DeiTModel": (lambda: DeiTModel(DeiTConfig(**SMALL), add_pooling_layer=False), 2),
    "DeiTForImageClassification": (lambda: DeiTForImageClassification(DeiTConfig(**SMALL, num_labels=3)), 2),
    "DeiTForImageClassificationWithTeacher": (
        lambda: DeiTForImageClassificationWithTeacher(DeiTConfig(**SMALL, num_labels=3)),
        2,
    ),
    "Dinov2Model": (lambda: Dinov2Model(Dinov2Config(**SMALL)), 1),
    "Dinov2ForImageClassification": (lambda: Dinov2ForImageClassification(Dinov2Config(**SMALL, num_labels=3)), 1),
}
# DINOv2 with registers arrived in transformers 4.48: test it wherever it exists (both CI environments).
if hasattr(transformers, "Dinov2WithRegistersModel"):
    _REGISTERS = transformers.Dinov2WithRegistersConfig
    FAMILIES["Dinov2WithRegistersModel"] = (
        lambda: transformers.Dinov2WithRegistersModel(_REGISTERS(**SMALL, num_register_tokens=4)),
        5,
    )
    FAMILIES["Dinov2WithRegistersForImageClassification"] = (
        lambda: transformers.Dinov2WithRegistersForImageClassification(
            _REGISTERS(**SMALL, num_register_tokens=4, num_labels=3)
        ),
        5,
    )


def build(name):
    factory, specials = FAMILIES[name]
    model = seeded(factory, trained_norms=True)
    with torch.no_grad():  # DINOv2's LayerScale starts at 1.0: give it trained-looking values too
        for module_name, parameter in model.named_parameters():
            if "lambda1" in module_name:
                parameter.copy_(0.5 + torch.rand_like(parameter))
    return model, specials


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the system picks it: bind to port 0), for a server a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def chrome_driver(window: str = "1400,2200"):
    """Headless Chromium through the system chromedriver; skips with the reason when any piece is missing."""
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must download nothing
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[report-test]')")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip("chromium and chromedriver are not installed (apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={window}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


# A rule weight that fails inside the forward pass (layer 1): the model must be left as found.
class Boom(RuntimeError):
    pass


def exploding_weight(state):
    if state.layer_index == 1:
        raise Boom("failure inside the forward pass")
    return AttentionWeight()(state)


def model_state(model, images) -> dict:
    """Everything a call must leave as found: the output on ``images``, parameters, hooks, module
    attributes, training flags, attention implementation, the attention registry, rules set on modules,
    ``requires_grad`` and ``.grad``."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    with torch.no_grad():
        output = model(images)
        output = getattr(output, "logits", None) if hasattr(output, "logits") else output[0]
    return {
        "output": output.clone(),
        "params": {name: p.detach().clone() for name, p in model.state_dict().items()},
        "hooks": {
            name: (
                len(m._forward_hooks),
                len(m._forward_pre_hooks),
                len(m._backward_hooks),
                len(getattr(m, "_forward_hooks_with_kwargs", {})),
            )
            for name, m in model.named_modules()
        },
        "attributes": {name: sorted(vars(m)) for name, m in model.named_modules()},
        "training": {name: m.training for name, m in model.named_modules()},
        "attn": model.config._attn_implementation,
        "registry": sorted(ALL_ATTENTION_FUNCTIONS.keys()),
        "rules": {name: getattr(m, "rule", None) for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    }


def assert_same_state(before: dict, after: dict) -> None:
    """Two :func:`model_state` snapshots are equal: outputs and parameters bitwise."""
    assert torch.equal(before["output"], after["output"])
    assert before["params"].keys() == after["params"].keys()
    for name, tensor in before["params"].items():
        assert torch.equal(tensor, after["params"][name]), name
    for key in ("hooks", "attributes", "training", "attn", "registry", "rules", "requires_grad"):
        assert before[key] == after[key], key
    for first, second in zip(before["grads"], after["grads"], strict=True):
        assert (first is None and second is None) or torch.equal(first, second)
