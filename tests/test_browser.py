"""nst serve in a real browser: headless Chromium, driven by Playwright, opens the page of a
real ``nst serve`` process, picks the bundled examples, starts a 64 px job, sees the preview
change and the progress reach the end, downloads the result and reads it back.

Skips with the reason when Playwright or a Chromium is missing (``.ci/run`` installs both:
Debian's ``chromium`` by apt, Playwright by the ``dev`` extra). Screenshots are kept in
``$NST_TEST_ARTIFACTS`` (default ``build/test-artifacts``)."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from runtimes import chromium  # noqa: E402  (NST_CHROMIUM, else the PATH's)

playwright = pytest.importorskip("playwright.sync_api",
                                 reason="Playwright is not installed: pip install -e '.[dev]'")
pytest.importorskip("starlette", reason="the [serve] extra is not installed")
CHROMIUM = chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get "
                                "install chromium; or set NST_CHROMIUM)")
ARTIFACTS = Path(os.environ.get("NST_TEST_ARTIFACTS") or ROOT / "build" / "test-artifacts")

# the picture shown in #preview, as the page has it decoded (a canvas reads its pixels)
PIXELS = """() => { const img = document.getElementById("preview");
  if (!img.complete || !img.naturalWidth) return null;
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  c.getContext("2d").drawImage(img, 0, 0);
  return c.toDataURL("image/png"); }"""


@pytest.fixture()
def server(models_dir, tmp_path):
    from _serve import running

    with running(tmp_path / "serve", models=models_dir, threads=2) as s:
        yield s


@pytest.fixture()
def page():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        errors: list[str] = []
        pg = browser.new_page(accept_downloads=True, viewport={"width": 1100, "height": 900})
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.errors = errors
        yield pg
        browser.close()


def test_the_page_runs_a_job_with_a_live_preview_and_a_download(server, page, tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.goto(server.url + "/")
    page.wait_for_selector("#style_examples input[value='starry_night.jpg']")
    assert page.input_value("#content_example") == "tubingen.jpg"
    page.check("#style_examples input[value='starry_night.jpg']")
    page.fill("#size", "64")
    page.uncheck("#until_finished")
    page.fill("#iterations", "150")
    page.screenshot(path=ARTIFACTS / "serve_1_form.png", full_page=True)
    page.click("#start")

    previews, progress, deadline = set(), [], time.monotonic() + 300
    while (state := page.inner_text("#state")) not in ("done", "failed", "cancelled"):
        assert time.monotonic() < deadline, progress[-3:]
        shown = page.evaluate(PIXELS)
        if shown:
            previews.add(hashlib.sha256(shown.encode()).hexdigest())
        progress.append(page.inner_text("#progress"))
        page.wait_for_timeout(100)
    page.wait_for_function("document.getElementById('preview').complete")
    page.wait_for_timeout(300)  # the final picture's fetch
    final = page.evaluate(PIXELS)
    assert final, "no preview was ever shown"
    previews.add(hashlib.sha256(final.encode()).hexdigest())
    page.screenshot(path=ARTIFACTS / "serve_2_done.png", full_page=True)

    assert state == "done", page.inner_text("#progress")
    assert page.inner_text("#progress").startswith("iteration 150 / 150"), progress[-3:]
    assert any(p.startswith("iteration ") and " / 150" in p and not p.startswith(
        "iteration 150 ") for p in progress), "no progress was shown while it ran"
    assert len(previews) >= 2, "the preview never changed"
    assert page.evaluate("document.getElementById('bar').value") == 1

    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    with Image.open(saved) as img:
        assert img.format == "PNG" and img.size == (64, 48)  # tubingen is 4:3
        assert "nst-onnx" in img.info  # its settings travel with it
    # the gallery lists it, and the page raised no script error
    assert page.locator("#gallery figure").count() == 1
    assert "starry_night.jpg" in page.inner_text("#gallery figcaption")
    assert page.errors == []
