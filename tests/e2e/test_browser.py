"""The app end to end in real headless Chromium: upload, click a patch, change the layer, downloads,
a corrupt upload, screenshots."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image

from .browser_app import CHROMIUM, CHROMIUM_ARGS, running_app, settle

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (scripts/test.sh "
                                                                       "installs it)")]
# Optional: where to keep the screenshots (default: the test's tmp dir), and a directory with a real
# vanilla/refined pair to drive the app with (default: an untrained vit_mini pair, fast and deterministic).
# Screenshots for docs/screenshots are taken with the shipped pair:
#   REFINER_E2E_CHECKPOINTS=checkpoints REFINER_E2E_SCREENSHOTS=/tmp/shots pytest tests/e2e
SHOTS = Path(os.environ["REFINER_E2E_SCREENSHOTS"]) if os.environ.get("REFINER_E2E_SCREENSHOTS") else None
CHECKPOINTS = Path(os.environ["REFINER_E2E_CHECKPOINTS"]) if os.environ.get("REFINER_E2E_CHECKPOINTS") else None


def url_params(page) -> dict:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def wait_for_charts(page, count: int = 2) -> None:
    """Wait for ``count`` charts, then until the run is over and every chart is redrawn (a fixed pause let a
    loaded machine click a chart of the previous run that was being replaced)."""
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length >= {count}", timeout=90_000)
    settle(page)


def test_app_in_a_real_browser(tmp_path: Path) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    from tests.app.conftest import make_pair

    pair = CHECKPOINTS.resolve() if CHECKPOINTS else make_pair(tmp_path / "checkpoints")
    shots = SHOTS or tmp_path / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    photo = tmp_path / "photo.png"
    Image.fromarray((np.indices((96, 128)).sum(0) % 256).astype(np.uint8)).convert("RGB").save(photo)
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(photo.read_bytes()[:200])

    with running_app(pair) as (url, _), playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400}, accept_downloads=True)
        page.goto(url, timeout=90_000)
        wait_for_charts(page)
        assert url_params(page)["a"] == "vanilla"
        page.screenshot(path=str(shots / "compare.png"), full_page=True)
        # The Analysis page of the default view (the docs screenshot), then back to Compare.
        page.get_by_role("link", name="Analysis").click()
        page.get_by_text("Analysis of the current image").wait_for(timeout=90_000)
        wait_for_charts(page, 3)
        page.screenshot(path=str(shots / "analysis.png"), full_page=True)
        page.get_by_role("link", name="Compare").click()
        page.get_by_text("Compare attention").wait_for(timeout=90_000)
        wait_for_charts(page)

        # Upload an image: it becomes the current image.
        page.locator("input[type=file]").first.set_input_files(str(photo))
        page.wait_for_function("location.search.includes('img=upload')", timeout=90_000)
        wait_for_charts(page)

        # Click a patch on the left overlay: the query token in the URL changes away from CLS.
        before = url_params(page).get("q")
        # The plot area (plotly's drag layer) of the left overlay, not the whole chart with title and colour bar.
        drag = page.locator(".js-plotly-plot").first.locator("rect.nsewdrag").first
        drag.wait_for(state="visible", timeout=60_000)
        box = drag.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.6)
        page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.6)
        page.wait_for_function(f"new URLSearchParams(location.search).get('q') !== '{before}'", timeout=60_000)
        assert url_params(page)["q"] != "0"

        # Change the layer with the keyboard on the sidebar slider.
        layer = url_params(page)["layer"]
        page.locator("[data-testid=stSidebar] [data-testid=stSlider] input").first.focus()
        page.keyboard.press("ArrowLeft")
        page.wait_for_function(f"new URLSearchParams(location.search).get('layer') !== '{layer}'", timeout=60_000)
        wait_for_charts(page)
        page.screenshot(path=str(shots / "compare-upload.png"), full_page=True)

        # Download the first figure's PNG.
        page.get_by_role("button", name="Export figure").first.click()
        with page.expect_download(timeout=90_000) as download:
            page.get_by_role("button", name="PNG (2x)").first.click()
        png = Path(download.value.path()).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(png)).size[0] > 100
        page.keyboard.press("Escape")

        # The bundle of the view: a zip with manifest.json, the figures, tables and raw maps.
        page.get_by_role("button", name="Download bundle (ZIP)").click()
        with page.expect_download(timeout=120_000) as download:
            page.get_by_role("button", name="Bundle (ZIP)", exact=True).click()
        with zipfile.ZipFile(download.value.path()) as archive:
            names = set(archive.namelist())
            manifest = json.loads(archive.read("manifest.json"))
        assert {"maps/maps.npz", "tables/top5.csv"} <= names and any(n.endswith(".png") for n in names)
        assert [m["label"] for m in manifest["models"]] == ["vanilla", "refined"]
        assert manifest["settings"]["query_a"] == int(url_params(page)["q"])
        page.keyboard.press("Escape")

        # Raw maps of both models as NPZ (a zip archive with the arrays).
        page.get_by_role("tab", name="Raw maps").click()
        with page.expect_download(timeout=90_000) as download:
            page.get_by_role("button", name="A: vanilla (NPZ)").click()
        with zipfile.ZipFile(download.value.path()) as archive:
            assert {"softmax.npy", "effective.npy"} <= set(archive.namelist())

        # A corrupt upload: a clear message, the current image stays.
        current = url_params(page)["img"]
        page.locator("input[type=file]").first.set_input_files(str(corrupt))
        page.get_by_text("corrupt or truncated").wait_for(timeout=60_000)
        assert url_params(page)["img"] == current
        page.screenshot(path=str(shots / "corrupt-upload.png"), full_page=True)

        # The Analysis page draws its figures.
        # The Analysis page, through the navigation so the session (upload, selection) carries over.
        page.get_by_role("link", name="Analysis").click()
        page.get_by_text("Analysis of the current image").wait_for(timeout=90_000)
        wait_for_charts(page, 3)
        assert url_params(page)["img"] == current
        page.screenshot(path=str(shots / "analysis-upload.png"), full_page=True)
        browser.close()
