"""The HTML report of an analysis: its content, its review export, and how it looks in a real
browser (headless Chromium through Playwright: every picture loads, no console error)."""

from __future__ import annotations

import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from orgaseg_core.results.report import review_objects, write_report

CLASSES = ["Cyst", "Branched"]


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.headings, self._h = [], [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "a":
            self.links.append(attrs["href"])
        self._h = tag == "h2"

    def handle_data(self, data):
        if self._h:
            self.headings.append(data.strip())
            self._h = False


def _analysis(root: Path, n_images: int = 3, per_image: int = 5) -> dict:
    """An analysis folder as analyze leaves it: overlays, crops, QuPath files, tables, a plot."""
    rng = np.random.default_rng(0)
    rows, summary = [], []
    for i in range(n_images):
        stem = f"A0{i + 1}_{'control' if i % 2 == 0 else 'drug'}"
        (root / "overlays").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(root / "overlays" / f"{stem}.png")
        features = []
        for label in range(1, per_image + 1):
            crop = f"crops/{stem}_{label}.tif"
            (root / "objects" / "crops").mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(root / "objects" / crop, rng.integers(0, 4000, (30, 40), dtype=np.uint16))
            confidence = float(rng.uniform(0.3, 1.0))
            cls = CLASSES[label % 2]
            rows.append({"image": f"{stem}.tif", "stem": stem, "label": label, "predicted_class": cls,
                         "confidence": confidence, "prob_Cyst": confidence if cls == "Cyst" else 1 - confidence,
                         "prob_Branched": confidence if cls == "Branched" else 1 - confidence, "crop": crop})
            x = 20 * label
            features.append({"type": "Feature", "id": f"id-{stem}-{label}",
                             "geometry": {"type": "Polygon", "coordinates": [[[x, 10], [x + 10, 10], [x + 10, 20], [x, 10]]]},
                             "properties": {"objectType": "detection", "measurements": {"Label": label}}})
        (root / "qupath").mkdir(exist_ok=True)
        (root / "qupath" / f"{stem}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        summary.append({"image": f"{stem}.tif", "stem": stem, "objects": per_image, "classified": per_image,
                        "count_Cyst": per_image // 2, "count_Branched": per_image - per_image // 2,
                        "mean_confidence": 0.7, "needs_review": 1})
    plot = root / "plots" / "confidence.png"
    plot.parent.mkdir()
    Image.fromarray(np.full((100, 200, 3), 200, np.uint8)).save(plot)
    plot.with_suffix(".svg").write_text("<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>")
    conditions = pd.DataFrame({"grouping": ["condition", "condition"], "condition": ["control", "drug"],
                               "organoids": [10, 5], "fraction_Cyst": [0.4, 0.6],
                               "fraction_Cyst_wilson_low": [0.1, 0.2]})
    return {"objects": pd.DataFrame(rows), "summary": pd.DataFrame(summary), "conditions": conditions,
            "plots": [plot]}


def _write(root: Path, review_size: int = 6) -> tuple[Path, dict]:
    tables = _analysis(root)
    report = write_report(root, objects=tables["objects"], summary=tables["summary"], conditions=tables["conditions"],
                          class_names=CLASSES, plots=tables["plots"], review_size=review_size,
                          run={"inputs": {"images": "plates/", "classifier": "models/classifier"},
                               "arguments": {"min_area": 50, "metadata": None}, "versions": {"orgaseg-core": "0.8.0"},
                               "pixel_size": "0.65 µm per pixel"})
    return report, tables


def test_the_report_shows_every_part_and_every_picture_exists(tmp_path):
    report, tables = _write(tmp_path)
    assert report == tmp_path / "report.html"
    text = report.read_text(encoding="utf-8")
    parsed = _Links()
    parsed.feed(text)
    assert parsed.headings == ["What was run", "Plots", "Conditions", "Images", "Review"]
    assert "0.65 µm per pixel" in text and "orgaseg-core 0.8.0" in text and "models/classifier" in text
    assert "wilson" not in text  # the interval to read is the bootstrap's; Wilson's stays in the CSV
    # every picture and link is relative and exists: the folder opens from disk without a server
    for src in parsed.images + parsed.links:
        assert not src.startswith(("/", "http")), src
        assert (tmp_path / unquote(src)).is_file(), src
    assert len([s for s in parsed.images if s.startswith("report/thumbnails/")]) == 3
    assert len([s for s in parsed.images if s.startswith("report/review/")]) == 6
    thumb = Image.open(tmp_path / "report" / "thumbnails" / "A01_control.jpg")
    assert max(thumb.size) == 320


def test_the_review_list_is_the_least_confident_and_is_named_for_qupath(tmp_path):
    report, tables = _write(tmp_path, review_size=4)
    lowest = tables["objects"].nsmallest(4, "confidence")
    assert list(review_objects(tables["objects"], 4)["confidence"]) == sorted(lowest["confidence"])
    named = {}
    for path in (tmp_path / "qupath-review").glob("*.geojson"):
        for feature in json.loads(path.read_text())["features"]:
            named[(path.stem, feature["properties"]["measurements"]["Label"])] = feature["properties"]["name"]
    expected = {(r.stem, r.label): f"Review: {r.predicted_class} ({r.confidence:.2f})" for r in lowest.itertuples()}
    assert named == expected


def _chromium() -> str | None:
    for name in (os.environ.get("ORGASEG_CHROMIUM", ""), "chromium-headless-shell", "chromium", "chromium-browser",
                 "google-chrome"):
        found = shutil.which(name) if name else None
        if found:
            return found
    for path in Path("/usr/lib").glob("chromium*/chrome-headless-shell"):
        return str(path)
    return None


def test_the_report_loads_in_a_real_browser(tmp_path):
    """Headless Chromium (Debian's, driven by Playwright): every image loads, nothing fails, no
    console error; a screenshot is saved beside the report."""
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium-headless-shell, or set ORGASEG_CHROMIUM)")
    report, _ = _write(tmp_path)
    errors, failed = [], []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto(report.as_uri(), wait_until="load")
        broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                               ".map(i => i.getAttribute('src'))")
        n_images = page.evaluate("document.images.length")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert n_images == 1 + 3 + 6  # plot, thumbnails, review crops
    assert broken == [] and failed == [] and errors == []
    assert Image.open(tmp_path / "report.png").size[0] == 1280
