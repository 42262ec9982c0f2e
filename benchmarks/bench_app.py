"""Interaction times of ``tokenlrp app`` and load time of ``tokenlrp report``: writes benchmarks/APP.md.

    python benchmarks/bench_app.py                 # full run (~3 min): APP.md
    python benchmarks/bench_app.py --quick         # a smoke run of every path (CI), prints only
    python benchmarks/bench_app.py --screenshots   # also the README's screenshots (benchmarks/*_screenshot.png)

The app's interactions are timed on its model side (:class:`captum_tokenlrp.app.Explorer` and
:func:`captum_tokenlrp.app.render`, exactly what a page event calls), without the browser's own
drawing: a new image (the forward pass plus every view), then choices that replay the cached capture.
Models: the bundled shapes ViT and a random-init model of the ``facebook/dino-vits16`` architecture
(the same size and cost as the real one) saved as a local checkpoint. Medians over repeats.

The report is timed in headless Chromium: an ``explain-dir`` run over N images of a small random ViT,
``write_report``, then the time from opening ``index.html`` to its first page of cards.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

from captum_tokenlrp import __version__
from captum_tokenlrp.app import Explorer, ViewSettings, bundled_samples, launch, render
from captum_tokenlrp.cli import main as cli_main
from captum_tokenlrp.models import random_dino_model
from captum_tokenlrp.report import PAGE_SIZE, write_report

HERE = Path(__file__).resolve().parent

#: (name, settings) of the interactions after the first view; each changes one choice.
INTERACTIONS = [
    ("rule (method of the overlay)", ViewSettings(method="ii")),
    ("head of the overlay", ViewSettings(method="ii", head="head 2")),
    ("start token", ViewSettings(method="ii", start_token=3)),
    ("head fusion (redraws the paper figure)", ViewSettings(method="ii", head_fusion="max")),
]
#: Choices whose handler skips the paper's figure (sliders).
SLIDERS = [
    ("opacity slider", ViewSettings(method="ii", opacity=0.3)),
    ("layer slider", ViewSettings(method="ii", depth=2)),
]


def dino_checkpoint(folder: Path) -> str:
    from transformers import ViTImageProcessor

    model = random_dino_model("facebook/dino-vits16", seed=0)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)
    return str(folder)


def photo(seed: int, size: int = 320) -> Image.Image:
    """A smooth random picture (what the DINO model gets; its weights are random anyway)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((8, 8, 3))
    return Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)


def time_explorer(explorer: Explorer, images: list[Image.Image], repeats: int) -> list[tuple[str, float]]:
    """Median milliseconds per interaction kind; each repeat starts from a new image (nothing cached)."""
    times: dict[str, list[float]] = {"new image: forward pass + every view": []}
    for name, _ in INTERACTIONS + SLIDERS:
        times[name] = []
    times["GAE, first target (forward + backward)"] = []
    times["GAE, same target again (cached)"] = []
    for repeat in range(repeats):
        image = images[repeat % len(images)]
        explorer._captures.clear()
        began = time.perf_counter()
        render(explorer, explorer.capture(image), ViewSettings())
        times["new image: forward pass + every view"].append(time.perf_counter() - began)
        for name, settings in INTERACTIONS:
            began = time.perf_counter()
            render(explorer, explorer.capture(image), settings)
            times[name].append(time.perf_counter() - began)
        for name, settings in SLIDERS:
            began = time.perf_counter()
            render(explorer, explorer.capture(image), settings, figure=False)
            times[name].append(time.perf_counter() - began)
        if explorer.is_classifier:
            for name in ("GAE, first target (forward + backward)", "GAE, same target again (cached)"):
                began = time.perf_counter()
                render(explorer, explorer.capture(image), ViewSettings(method="GAE"), figure=False)
                times[name].append(time.perf_counter() - began)
    return [(name, 1000 * statistics.median(values)) for name, values in times.items() if values]


def time_report(count: int, root: Path) -> tuple[float, float]:
    """(seconds to write the report, seconds until its first page shows in Chromium) for ``count`` images."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    checkpoint = root / "tiny"
    ViTModel(config, add_pooling_layer=False).save_pretrained(checkpoint)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(checkpoint)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"image_{index:05d}.png")
    out = root / "run"
    arguments = ["explain-dir", str(images), "--model", str(checkpoint), "--out", str(out), "--quiet"]
    if cli_main([*arguments, "--batch-size", "250"]) != 0:
        raise RuntimeError("explain-dir failed")
    began = time.perf_counter()
    index = write_report(out, images)
    written = time.perf_counter() - began
    driver = chrome(window="1400,1000")
    try:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        began = time.perf_counter()
        driver.get(index.resolve().as_uri())
        WebDriverWait(driver, 60).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#cards .card")) == min(PAGE_SIZE, count)
        )
        shown = time.perf_counter() - began
    finally:
        driver.quit()
    return written, shown


def chrome(window: str):
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None or shutil.which("chromedriver") is None:
        raise SystemExit("chromium and chromedriver are needed (apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={window}"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def screenshots(folder: Path, report_index: Path) -> None:
    """The app on a bundled sample (rule (ii), head fusion mean) and the first page of a report."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    folder.mkdir(parents=True, exist_ok=True)
    server, url = launch("bundled", port=7899, block=False)
    driver = chrome(window="1400,1500")
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(url)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image-input input[type=file]"))
        samples = Path(tempfile.mkdtemp())
        bundled_samples(samples)
        driver.find_element(By.CSS_SELECTOR, "#image-input input[type=file]").send_keys(
            str(sorted(samples.glob("*.png"))[3])
        )
        wait.until(lambda d: "Mass on the object" in d.find_element(By.ID, "summary").text)
        driver.find_element(By.CSS_SELECTOR, "#method input[type=radio][value='ii']").click()
        wait.until(lambda d: "rule (ii), mean" in d.find_element(By.ID, "summary").text)
        time.sleep(1.0)
        driver.save_screenshot(str(folder / "app_screenshot.png"))
        driver.get(report_index.resolve().as_uri())
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#cards .card"))
        time.sleep(1.0)
        driver.save_screenshot(str(folder / "report_screenshot.png"))
    finally:
        driver.quit()
        server.close()
    print(f"Wrote {folder / 'app_screenshot.png'} and {folder / 'report_screenshot.png'}")


def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}; {os.cpu_count()} logical CPUs, torch threads "
        f"{torch.get_num_threads()}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, captum-tokenlrp {__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repeat, 120 report images; prints, writes nothing")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--report-images", type=int, default=1000)
    parser.add_argument(
        "--screenshots", action="store_true", help="also write app_screenshot.png and report_screenshot.png here"
    )
    parser.add_argument("--out", type=Path, default=HERE / "APP.md")
    args = parser.parse_args(argv)
    repeats, report_count = (1, 120) if args.quick else (args.repeats, args.report_images)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        bundled = Explorer("bundled")
        sample_dir = scratch / "samples"
        bundled.masks.update(bundled_samples(sample_dir))
        shapes = [Image.open(path).convert("RGB") for path in sorted(sample_dir.glob("*.png"))]
        rows = {"bundled shapes ViT (64 px, 6 layers x 6 heads, 65 tokens)": time_explorer(bundled, shapes, repeats)}
        dino = Explorer(dino_checkpoint(scratch / "dino-vits16"))
        rows["dino-vits16 architecture (224 px, 12 layers x 6 heads, 197 tokens)"] = time_explorer(
            dino, [photo(seed) for seed in range(3)], repeats
        )
        report_root = scratch / "report"
        report_root.mkdir()
        written, shown = time_report(report_count, report_root)
        if args.screenshots:
            screenshots(HERE, report_root / "run" / "report" / "index.html")
    lines = [
        "# Interaction times of `tokenlrp app` and the report's load time",
        "",
        f"Generated by `python benchmarks/bench_app.py` in {time.perf_counter() - started:.0f} s. Do not edit by hand.",
        "",
        f"Machine: {machine()}.",
        "",
        "Median wall time over "
        f"{repeats} repeats of the app's handler (model side and every image it sends: the figure is drawn "
        "and the overlays with PIL), without the browser's transfer and drawing. Every repeat "
        "starts from a new image; the rows below the first replay the cached forward pass (no model run), "
        "except GAE's first target, which needs a backward pass.",
        "",
    ]
    for model, measured in rows.items():
        lines += [f"### {model}", "", "| interaction | median (ms) |", "|---|---:|"]
        lines += [f"| {name} | {milliseconds:.0f} |" for name, milliseconds in measured]
        lines.append("")
    lines += [
        f"### `tokenlrp report`, {report_count} images",
        "",
        f"- `write_report` (thumbnails, data, page): {written:.1f} s",
        f"- headless Chromium, from opening `index.html` to its first page of {min(PAGE_SIZE, report_count)} "
        f"cards: {shown:.2f} s",
        "",
    ]
    text = "\n".join(lines)
    if args.quick:
        print(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
