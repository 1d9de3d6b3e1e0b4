"""One real browser: headless Debian Chromium (driven by Playwright) uploads a real cell image to the
app on the bundled model, sees the top-3 labels, then counts a whole field in the Field count view and
sees its overlay, and saves screenshots."""

import shutil
import socket

import pytest

from marrowscope.apps.app import build_demo
from marrowscope.core.classes import FULL_NAMES
from marrowscope.core.predict import Predictor
from tests.test_count import draw_field

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (make test installs it)")
def test_upload_shows_top3(real_data, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    from marrowscope.apps.app_models import explainer_for

    predictor = Predictor()
    explainer = explainer_for(predictor)  # as `marrowscope app` and the Space choose it: the map from the ONNX file
    demo = build_demo(predictor, explainer=explainer)
    demo.queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_port=port)
    image = real_data / "EOS" / "EOS_00003.jpg"
    field = tmp_path / "field.png"
    draw_field((900, 700), [(300, 350), (620, 300)]).save(field)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
            page.locator("input[type=file]").first.wait_for(state="attached", timeout=60_000)
            page.locator("input[type=file]").first.set_input_files(str(image))
            page.get_by_role("button", name="Classify", exact=True).click()
            page.get_by_text("Eosinophil (EOS)").first.wait_for(timeout=60_000)
            page.wait_for_timeout(500)
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)
            text = page.inner_text("body")
            top3 = page.locator("#top3").inner_text()  # the Label output alone, not the header's class list
            page.locator("#cam img").first.wait_for(timeout=60_000)  # the map of where the model looked
            # the Field count view: a whole field in, the count and its overlay out
            page.get_by_role("tab", name="Field count").click()
            page.locator("#field-files input[type=file]").set_input_files(str(field))
            page.get_by_role("button", name="Count", exact=True).click()
            page.get_by_text("cell(s) counted").first.wait_for(timeout=120_000)
            page.wait_for_timeout(500)
            field_text = page.inner_text("body")
            page.screenshot(path=str(tmp_path / "field.png"), full_page=True)
            overlays = page.locator("#field-overlays img").count()
            browser.close()
        assert "Most likely" in text and f"Map: {explainer.name}" in text
        shown = [name for name in FULL_NAMES.values() if f"{name} (" in top3]
        assert len(shown) == 3 and "Eosinophil" in shown, top3
        assert top3.count("%") >= 3, top3
        assert shot.stat().st_size > 10_000
        assert "Differential with 95% intervals" in field_text and "cell(s) counted" in field_text
        assert overlays >= 1
        shutil.copy(shot, "/tmp/marrowscope-browser-test.png")
    finally:
        demo.close()
