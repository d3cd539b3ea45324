"""Make docs/report.png, the README's picture of a report: the top of ``<analysis>/report.html``
in headless Chromium (Playwright), 1100 px wide, 1500 px tall, scaled to 70% and stored with a
palette so that it stays small.

Usage:  python docs/make_report_screenshot.py orgaseg-demo/analysis/report.html [docs/report.png]

Needs Playwright (``pip install -e ".[dev]"``) and a Chromium (``apt-get install
chromium-headless-shell``, or ``ORGASEG_CHROMIUM=/path/to/chrome``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

WIDTH, HEIGHT, SCALE = 1100, 1500, 0.7


def chromium() -> str:
    for name in (os.environ.get("ORGASEG_CHROMIUM", ""), "chromium-headless-shell", "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise SystemExit("no Chromium found: apt-get install chromium-headless-shell, or set ORGASEG_CHROMIUM")


def main() -> int:
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__.split("\n\n")[1])
    report = Path(sys.argv[1]).resolve()
    out = Path(sys.argv[2]) if len(sys.argv) == 3 else Path(__file__).with_name("report.png")
    if not report.is_file():
        raise SystemExit(f"{report}: no such report")
    from PIL import Image
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.goto(report.as_uri(), wait_until="load")
        shot = Path(tmp) / "shot.png"
        page.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": WIDTH, "height": HEIGHT})
        browser.close()
        image = Image.open(shot).convert("RGB")
        image = image.resize((round(WIDTH * SCALE), round(HEIGHT * SCALE)), Image.LANCZOS)
        image.quantize(colors=128).save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
