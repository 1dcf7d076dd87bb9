"""A real browser (PyPI's playwright driving Debian's chromium): a bad upload gets our sentence, then an
image is uploaded, previewed as the models see it, and attacked."""
import os
import socket
from pathlib import Path

import pytest


CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (CI installs Debian's chromium with apt; never `playwright install`)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

import app  # noqa: E402
from helpers import EXAMPLE, tiny_models  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def test_upload_attack_and_see_every_models_predictions(tmp_path):
    demo = app.build_app(tiny_models(), checkpoint_dir=tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app.launch_options())
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
            upload = page.locator("#pmg-image input[type=file]")
            upload.set_input_files({"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"})
            toast = page.get_by_text("That file is not a readable image", exact=False).first
            toast.wait_for(timeout=30_000)  # our sentence, shown right after the upload
            page.locator(".toast-close").first.click()
            page.locator("#pmg-image button[aria-label='Remove Image']").first.click()
            upload.set_input_files(EXAMPLE)
            page.locator("#pmg-image img").first.wait_for(timeout=30_000)
            page.locator("#pmg-preview img").first.wait_for(timeout=30_000)  # what the models see, drawn by us
            page.locator("#pmg-attack").click()
            rows = page.locator(".pmg-model")
            rows.nth(2).wait_for(timeout=120_000)
            assert [rows.nth(i).get_attribute("data-model") for i in range(rows.count())] == ["clip", "tecoa", "pmg-aft"]
            text = page.locator("#pmg-verdicts").inner_text()
            assert text.count("right") + text.count("wrong") >= 6  # a mark for clean and adversarial per model
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "attack.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
