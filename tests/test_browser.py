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


def test_a_visitor_over_their_places_reads_our_sentence_not_gradios_busy_page(tmp_path):
    """On a public server, a Train from an address whose places in the jobs lane are taken is refused,
    and the page shows why (Gradio's page words a 503 "currently busy"; studio/visitors.py answers 400)."""
    import httpx
    from gradio_client import Client
    from gradio_client.utils import Status

    from helpers import behind_loopback_proxy, first_step_shown, wait_for
    from studio import visitors

    with behind_loopback_proxy():
        demo = app.build_app(tiny_models(), checkpoint_dir=tmp_path, public=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app.launch_options())
    url = f"http://127.0.0.1:{port}/"

    def train(client, name, steps=1, batch=8, attack_steps=1):
        return client.submit("clip", "tecoa", "toy-colours", 1, attack_steps, 0.01, steps, batch, 1, 1, name,
                             api_name="/train")

    blocker = Client(url, verbose=False, headers={"X-Forwarded-For": "8.8.4.4"})
    try:
        running = train(blocker, "browser-blocker", steps=500, batch=32, attack_steps=3)  # holds the jobs lane
        assert wait_for(lambda: first_step_shown(running), 120)
        waiting = [train(Client(url, verbose=False, headers={"X-Forwarded-For": "1.0.0.1"}), f"browser-wait-{i}")
                   for i in range(visitors.PER_VISITOR)]  # the address's places, taken by other sessions of it
        assert wait_for(lambda: not any(j.status().code in (Status.STARTING, Status.JOINING_QUEUE) for j in waiting),
                        120)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_context(extra_http_headers={"X-Forwarded-For": "1.0.0.1"}).new_page()
            page.goto(url, timeout=60_000)
            page.get_by_role("tab", name="Train").click()
            page.get_by_role("button", name="Train", exact=True).click()
            said = page.get_by_text("Queue is full for your network address", exact=False).first
            said.wait_for(timeout=60_000)
            assert "let them finish or cancel them" in said.inner_text()
            browser.close()
    finally:
        httpx.post(f"{url}gradio_api/run/cancel_train", json={"data": [], "session_hash": blocker.session_hash},
                   timeout=60)
        demo.close()
