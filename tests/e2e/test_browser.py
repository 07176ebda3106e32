"""The app end to end in real headless Chromium: upload, click a patch, change the layer, downloads,
a corrupt upload, a tiny upload, the whole view from a URL (Back, reload), colours on the page against the
exported figure, the Dataset page run twice and from a second session, screenshots."""

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
    page.wait_for_function(f"document.querySelectorAll('div.refiner-chart[data-drawn]').length >= {count}", timeout=90_000)
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
        drag = page.locator("div.refiner-chart").first.locator("rect.nsewdrag").first
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

        # A file that is not an image: the message says which types are accepted; the current image stays.
        notes = tmp_path / "notes.txt"
        notes.write_text("not an image\n")
        page.locator("input[type=file]").first.set_input_files(str(notes))
        page.get_by_text("notes.txt: the file is not an image in a supported format (JPEG, PNG").wait_for(timeout=60_000)
        assert url_params(page)["img"] == current

        # An image smaller than one patch (issue 11 bug 2): no traceback; it is shown enlarged, as the model sees
        # it, with a note, and the earlier upload stays in the Image picker.
        tiny = tmp_path / "dot.png"
        Image.new("RGB", (1, 1), (250, 250, 250)).save(tiny)
        page.locator("input[type=file]").first.set_input_files(str(tiny))
        page.wait_for_function(f"new URLSearchParams(location.search).get('img') !== '{current}'", timeout=90_000)
        page.get_by_text("smaller than one 6 x 6 patch").first.wait_for(timeout=60_000)
        wait_for_charts(page)
        assert not page.locator("[data-testid=stException]").count()
        page.screenshot(path=str(shots / "tiny-upload.png"), full_page=True)
        page.locator("[data-testid=stSidebar] [data-testid=stSelectbox]", has_text="Image").first.click()
        assert page.get_by_role("option", name="Upload: photo.png").count() == 1
        page.get_by_role("option", name="Upload: photo.png").click()
        page.wait_for_function(f"new URLSearchParams(location.search).get('img') === '{current}'", timeout=90_000)
        wait_for_charts(page)

        # The Analysis page draws its figures.
        # The Analysis page, through the navigation so the session (upload, selection) carries over.
        page.get_by_role("link", name="Analysis").click()
        page.get_by_text("Analysis of the current image").wait_for(timeout=90_000)
        wait_for_charts(page, 3)
        assert url_params(page)["img"] == current
        page.screenshot(path=str(shots / "analysis-upload.png"), full_page=True)
        browser.close()


def _png_from_data_url(url: str) -> Image.Image:
    import base64

    prefix = "data:image/png;base64,"
    assert url.startswith(prefix), url[:40]
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix):]))).convert("RGB")


def _heatmap_png(svg: str) -> Image.Image:
    """The first heatmap's picture in plotly's SVG: plotly draws a heatmap as one PNG <image> in its ``hm`` group."""
    import re

    match = re.search(r'class="hm".*?href="(data:image/png;base64,[^"]+)"', svg, flags=re.S)
    assert match, "no heatmap image in the exported SVG"
    return _png_from_data_url(match.group(1))


def _cell_colours(image: Image.Image, grid: tuple) -> np.ndarray:
    """(Gh, Gw, 3) colour at each cell centre of a heatmap picture of any resolution."""
    pixels = np.asarray(image).astype(int)
    rows = ((np.arange(grid[0]) + 0.5) * pixels.shape[0] / grid[0]).astype(int)
    cols = ((np.arange(grid[1]) + 0.5) * pixels.shape[1] / grid[1]).astype(int)
    return pixels[rows][:, cols]


def test_whole_view_from_a_url_back_reload_and_colours(tmp_path: Path) -> None:
    """A shared link restores the whole view (image, map kind, tab, opacity, shared scale, layer, head); Back
    steps back through views; a reload keeps the view; the overlay colours drawn on the page are the exported
    figure's (Streamlit's theme used to turn Inferno's black into #ffabab)."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    from tests.app.conftest import make_pair

    pair = CHECKPOINTS.resolve() if CHECKPOINTS else make_pair(tmp_path / "checkpoints")
    shots = SHOTS or tmp_path / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    view = "img=digit:123&kind=softmax&tab=matrix&opacity=0.35&shared=1&layer=2&head=1"
    with running_app(pair) as (url, _), playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400}, accept_downloads=True)
        page.goto(f"{url}/?{view}", timeout=90_000)
        wait_for_charts(page, 4)

        def state() -> dict:
            return page.evaluate("""() => ({
              titles: Array.from(document.querySelectorAll('.gtitle')).map(t => t.textContent),
              tab: (Array.from(document.querySelectorAll('[role=tab]')).find(t => t.getAttribute('aria-selected')
                    === 'true') || {}).textContent,
              softmax: Array.from(document.querySelectorAll('input[type=radio]')).some(r => r.checked &&
                    r.closest('label').textContent.includes('softmax')),
              shared: Array.from(document.querySelectorAll('input[type=checkbox]')).some(c => c.checked &&
                    c.closest('label').textContent.includes('Same colour scale')),
              opacity: (document.querySelector('[data-testid=stMain] [data-testid=stSliderThumbValue]') ||
                    {}).textContent})""")

        restored = state()
        assert restored["titles"][0] == "A: vanilla, layer 2/8, head 1, softmax", restored
        assert restored["tab"] == "N x N matrix" and restored["softmax"] and restored["shared"], restored
        assert restored["opacity"] == "0.35", restored
        assert any(t.startswith("A: vanilla, layer 2, head 1, softmax") for t in restored["titles"])  # the matrix
        assert page.evaluate("() => Array.from(document.querySelectorAll('[data-testid=stSidebar] "
                             "[data-testid=stSelectbox]')).some(s => (s.innerText + ' ' + Array.from("
                             "s.querySelectorAll('input')).map(i => i.value).join(' ')).includes('Cluttered digit #123'))")
        page.screenshot(path=str(shots / "url-restored.png"), full_page=True)

        # A new view (layer 3), then Back: the previous view again, in the URL and on the page.
        page.locator("[data-testid=stSidebar] [data-testid=stSlider] input").first.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function("new URLSearchParams(location.search).get('layer') === '3'", timeout=60_000)
        wait_for_charts(page, 4)
        assert state()["titles"][0].startswith("A: vanilla, layer 3/8")
        page.go_back()
        page.wait_for_function("new URLSearchParams(location.search).get('layer') === '2'", timeout=60_000)
        page.wait_for_function("() => (document.querySelector('.gtitle') || {}).textContent === "
                               "'A: vanilla, layer 2/8, head 1, softmax'", timeout=60_000)
        settle(page)
        # A reload is a new session on the same URL: the same view.
        page.reload(timeout=90_000)
        wait_for_charts(page, 4)
        assert state() == restored

        # Colours: the overlay heatmap as the page drew it against the same figure exported as SVG.
        drawn = page.evaluate("() => document.querySelector('div.refiner-chart .hm image').getAttribute('href')")
        page.get_by_role("button", name="Export figure").first.click()
        with page.expect_download(timeout=120_000) as download:
            page.get_by_role("button", name="SVG", exact=True).first.click()
        exported = Path(download.value.path()).read_text(encoding="utf-8")
        page.keyboard.press("Escape")
        on_page = _cell_colours(_png_from_data_url(drawn), (8, 8))
        in_file = _cell_colours(_heatmap_png(exported), (8, 8))
        assert np.abs(on_page - in_file).max() <= 2, (on_page[:2, :2], in_file[:2, :2])
        # The weakest cell is Inferno's black on the page, not the theme's pink.
        darkest = on_page.reshape(-1, 3)[on_page.reshape(-1, 3).sum(1).argmin()]
        assert np.abs(darkest - np.array([0, 0, 4])).max() <= 3, darkest
        browser.close()


def test_dataset_page_runs_twice_and_from_a_second_session(tmp_path: Path) -> None:
    """Issue 11 bug 1 in the browser: a second Run with the same settings, and a Run from a second session, draw
    the results (a CacheReplayClosureError with a traceback, and a progress bar stuck, before)."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    from tests.app.conftest import make_pair

    pair = CHECKPOINTS.resolve() if CHECKPOINTS else make_pair(tmp_path / "checkpoints")
    shots = SHOTS or tmp_path / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    with running_app(pair) as (url, _), playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for session in range(2):
            page = browser.new_context(viewport={"width": 1400, "height": 1400}).new_page()
            page.goto(url, timeout=90_000)
            wait_for_charts(page)
            page.get_by_role("link", name="Dataset").click()
            page.get_by_text("Dataset-level analysis").wait_for(timeout=90_000)
            page.locator("[data-testid=stMain] [data-testid=stSlider] input").first.focus()
            page.keyboard.press("Home")  # 10 canvases
            page.get_by_text("10 images, both models.").wait_for(timeout=60_000)
            for _click in range(2 if session == 0 else 1):
                page.get_by_role("button", name="Run").click()
                page.locator("[data-testid=stDataFrame]").first.wait_for(timeout=120_000)
                settle(page)
                assert not page.locator("[data-testid=stException]").count()
                assert not page.get_by_text("Running both models").count()  # the progress bar is gone
                # Streamlit drops the previous run's leftovers in a React update just after the run ends (they
                # are not marked stale then), so under load a second copy can still be there for a moment.
                page.wait_for_function(
                    "() => Array.from(document.querySelectorAll('[data-testid=stCaptionContainer]')).filter("
                    "e => e.textContent.includes('10 images; mean per layer')).length === 1", timeout=30_000)
            page.screenshot(path=str(shots / f"dataset-session{session + 1}.png"), full_page=True)
            page.close()
        browser.close()
