"""A real browser (PyPI's playwright driving Debian's chromium): a bad upload gets our sentence, then an
image is uploaded, previewed as the models see it, and attacked."""
import os
from pathlib import Path

import pytest


CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (CI installs Debian's chromium with apt; never `playwright install`)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

import app  # noqa: E402
from helpers import EXAMPLE, free_port, tiny_models  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ROOT = Path(__file__).resolve().parent.parent


def _launch(demo) -> int:
    """Serve `demo` on a free loopback port as the app launches itself; returns the port."""
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app.launch_options())
    return port


def test_upload_attack_and_see_every_models_predictions(tmp_path):
    demo = app.build_app(tiny_models(), checkpoint_dir=tmp_path)
    port = _launch(demo)
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
    url = f"http://127.0.0.1:{_launch(demo)}/"

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


def _in_view(page, selector: str, settle_ms: int = 3_000) -> bool:
    """Whether the element's whole box lies inside the viewport as the page is scrolled now, once the
    streamed outputs above it have settled (a progress line may still be re-drawing for a moment)."""
    size = page.viewport_size
    for _ in range(settle_ms // 250 + 1):
        box = page.locator(selector).first.bounding_box()
        if box is not None and box["y"] >= 0 and box["y"] + box["height"] <= size["height"] and box["x"] >= 0 \
                and box["x"] + box["width"] <= size["width"]:
            return True
        page.wait_for_timeout(250)
    return False


def test_the_attack_tab_s_first_screen_at_a_desk_and_on_a_phone(tmp_path):
    """A first-time visitor: the image and the Attack button are on the first screen; Attack with no image
    says so beside the button, with no error badge anywhere; after an example click, what the models see
    is drawn; after Attack the first verdict shows where they are looking (at 390 px, by scrolling down
    only), then every model's maps and robustness radius, and one zip of the comparison."""
    demo = app.build_app(tiny_models(), checkpoint_dir=tmp_path)
    port = _launch(demo)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            for width, height, phone in ((1280, 800, False), (390, 844, True)):
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
                page.locator("#pmg-attack").wait_for(timeout=60_000)
                assert _in_view(page, "#pmg-image") and _in_view(page, "#pmg-attack")
                if not phone:
                    page.locator("#pmg-attack").click()
                    page.locator("#pmg-hint", has_text="Pick an example").wait_for(timeout=30_000)
                    page.wait_for_timeout(1_000)  # time for any error to arrive
                    assert page.get_by_text("Error", exact=True).count() == 0
                    assert page.locator(".toast-body").count() == 0
                    page.locator("#pmg-with-radius input").check()  # maps are on by default
                    page.evaluate("window.scrollTo(0, 0)")  # ticking it scrolled down to the box
                page.locator("#pmg-examples .thumbnail-item").nth(2).click()  # the purple star
                page.locator("#pmg-preview img").first.wait_for(timeout=30_000)
                assert page.locator("#pmg-hint").inner_text().strip() == ""
                before = page.evaluate("window.scrollY")
                page.locator("#pmg-attack").click()
                first = page.locator(".pmg-model").first
                first.wait_for(timeout=120_000)
                if phone:  # below where they were: the page scrolls down to it, never up
                    assert page.evaluate("window.scrollY") >= before
                    page.evaluate("document.querySelector('.pmg-model').scrollIntoView({block: 'nearest'})")
                    assert page.evaluate("window.scrollY") >= before
                else:
                    assert page.evaluate("window.scrollY") == before == 0
                page.screenshot(path=str(ARTIFACTS / f"attack-tab-{width}.png"))
                assert _in_view(page, ".pmg-model"), (width, page.locator(".pmg-model").first.bounding_box())
                if not phone:
                    page.locator("#pmg-zip a").first.wait_for(timeout=180_000)  # the extras' last update
                    for model in ("clip", "tecoa", "pmg-aft"):  # 3 maps x clean, adversarial
                        assert page.locator(f"#pmg-maps tr[data-model='{model}'] img").count() == 6
                    assert page.locator("#pmg-radius img").count() == 1
                    details = page.locator("#pmg-details")
                    page.get_by_text("Details (JSON)").click()
                    assert all(m in details.inner_text() for m in ("radius_255", "tolerance_255"))
                    page.screenshot(path=str(ARTIFACTS / "attack-tab-extras.png"), full_page=True)
                page.close()
    finally:
        demo.close()


def _open_tab(page, name: str) -> None:
    """Click a tab by name; on a phone the tabs past the first sit behind Gradio's "More tabs" menu."""
    tab = page.get_by_role("tab", name=name)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
    else:
        page.get_by_label("More tabs").click()
        page.locator(".overflow-dropdown button", has_text=name).click()


# Every accuracy shown: a percentage and its 95% interval, "55.0 [34.2, 74.2]".
INTERVAL = r"\d+\.\d\s*\[\d+\.\d, \d+\.\d\]"


def _shown_in_view(page, locator, height: int) -> bool:
    """Whether the element's top edge and at least 80 px of it lie inside the viewport (a card may be
    taller than the screen)."""
    for _ in range(12):
        box = locator.bounding_box()
        if box is not None and 0 <= box["y"] <= height - 80:
            return True
        page.wait_for_timeout(250)
    return False


def _click_a_row_at_the_bottom_edge(page, rows, index: int) -> None:
    """Scroll a row to the bottom of the screen, then click it: its card opens below the fold unless the
    page brings it into view."""
    row = rows.nth(index)
    row.evaluate("r => r.scrollIntoView({block: 'end'})")
    row.locator("td.model").click()


def test_a_leaderboard_row_opens_its_card_in_view_and_every_number_carries_n_and_an_interval(tmp_path):
    """At a desk and on a phone: the table shows model, clean, robust and each interval with n; the heatmap
    keeps its dataset labels and gives each cell's n (the interval on hover); the scatter's points carry
    both intervals as error bars; a click on a row at the screen's bottom edge opens the card right under
    it, in view, and its sha256 wraps instead of running off a phone's screen."""
    import re

    from pmg_core.leaderboard import board

    cards = board.committed()["mini"]
    rows_expected = board.rows(cards)
    demo = app.build_app(tiny_models(), checkpoint_dir=tmp_path)
    port = _launch(demo)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            for width, height in ((1280, 800), (390, 844)):
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
                page.locator("#pmg-attack").wait_for(timeout=60_000)
                _open_tab(page, "Leaderboard")
                page.locator("#pmg-board-scatter .js-plotly-plot").wait_for(timeout=60_000)
                rows = page.locator("#pmg-leaderboard tr.pmg-row")
                assert rows.count() == len(rows_expected)
                shown = page.evaluate("""() => [...document.querySelectorAll('#pmg-leaderboard tr.pmg-row')].map(
                    r => [...r.cells].filter(c => c.offsetWidth > 0).map(c => c.innerText.replace(/\\s+/g, ' ').trim()))""")
                heads = page.evaluate("""() => [...document.querySelectorAll('#pmg-leaderboard thead th')]
                    .filter(c => c.offsetWidth > 0).map(c => c.innerText.replace(/\\s+/g, ' ').trim())""")
                core = ["band", "model", "n", "clean % [95% CI]", "robust % [95% CI]"]
                assert heads == core if width < 600 else heads[:2] + heads[3:6] == core, heads
                for cells, expected in zip(shown, rows_expected):
                    row = dict(zip(heads, cells))
                    assert row["model"].replace(" ", "") == expected["model"] and row["n"] == str(expected["n"])
                    accuracies = [v for k, v in row.items() if "%" in k and "published" not in k]
                    assert len(accuracies) == (2 if width < 600 else 3) and re.fullmatch(INTERVAL, accuracies[0])
                    assert all(v == "-" or re.fullmatch(INTERVAL, v) for v in accuracies), row
                heat = page.locator("#pmg-board-heatmap td")
                cells = heat.evaluate_all("tds => tds.map(td => [td.innerText, td.title])")
                assert len(cells) == sum(len(c["results"]) for c in cards)  # a cell per model and dataset
                assert all(re.search(r"n=\d+", text) and re.search(INTERVAL.replace(r"\s*", "% "), title)
                           for text, title in cells), cells[:3]
                labels = page.locator("#pmg-board-heatmap th.dataset")
                datasets = len(cards[0]["results"])  # one column label per dataset, each legible
                assert labels.count() == datasets and all(labels.nth(i).bounding_box()["height"] > 20
                                                          for i in range(datasets))
                bars = page.evaluate("""() => document.querySelector('#pmg-board-scatter .js-plotly-plot').data
                    .filter(t => t.x.length && t.x[0] !== null)
                    .map(t => [t.x.length, t.error_x.array.length, t.error_y.array.length, t.customdata.length])""")
                assert sum(b[0] for b in bars) == len(rows_expected) and all(len(set(b)) == 1 for b in bars)
                index = len(rows_expected) - 2
                _click_a_row_at_the_bottom_edge(page, rows, index)
                card = page.locator("#pmg-leaderboard .pmg-card").nth(index)
                card.wait_for(state="visible", timeout=10_000)
                assert _shown_in_view(page, card, height), card.bounding_box()
                model = rows_expected[index]["model"]
                opened = next(c for c in cards if c["name"] == model)
                assert opened["weights_sha256"] in card.inner_text().replace("\n", "")
                sha = card.locator("code.sha").bounding_box()
                assert sha["x"] + sha["width"] <= width  # wraps on a phone
                assert page.evaluate("document.documentElement.scrollWidth") <= width
                page.screenshot(path=str(ARTIFACTS / f"leaderboard-{width}.png"))
                page.close()
            browser.close()
    finally:
        demo.close()


def test_the_leaderboard_shows_the_fields_reported_numbers_apart_from_the_measured_cards(tmp_path):
    from pmg_core.leaderboard import reported

    groups = reported.groups()
    demo = app.build_app(tiny_models(), checkpoint_dir=tmp_path)
    port = _launch(demo)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
            page.get_by_role("tab", name="Leaderboard").click()
            block = page.locator("#pmg-reported")
            block.locator("table").first.wait_for(timeout=60_000)
            heading = page.locator("#pmg-reported-heading").inner_text()
            assert "reported by the authors, not measured here" in heading
            rows = block.locator("tbody tr")
            assert rows.count() == reported.count_models(groups) >= 12
            for i in range(rows.count()):  # each row links to its source
                assert rows.nth(i).locator("a[href^='https://github.com/']").count() == 1
            text = block.inner_text()
            assert all(g["protocol"] in text for g in groups)
            assert text.count("no interval reported") > len(groups) and "n (theirs): 1,000 images per dataset" in text
            measured = page.locator("#pmg-leaderboard").inner_text()  # the measured cards' table holds none of them
            assert not any(i in measured for g in groups for r in g["rows"] for i in r["ids"])
            ARTIFACTS.mkdir(exist_ok=True)
            block.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "leaderboard-reported.png"), full_page=True)
            browser.close()
    finally:
        demo.close()


def test_board_html_opened_offline_shows_the_table_and_a_clicked_row_opens_its_card():
    """The committed board.html with every request beyond the file refused: the table is there, each number
    with its interval, and a click opens the row's card in view."""
    from pmg_core.leaderboard import board

    path = board.committed()  # the folder's cards, to know what the table should hold
    folder = ROOT / "benchmarks" / "cards" / "mini"
    names = {c["name"] for c in path["mini"]}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        asked = []
        page.route("**/*", lambda route: (asked.append(route.request.url), route.continue_()
                                          if route.request.url.startswith("file:") else route.abort()))
        page.goto((folder / "board.html").as_uri())
        rows = page.locator("tr.pmg-row")
        assert rows.count() == len(names) and rows.first.is_visible()
        assert {rows.nth(i).locator("td.model").inner_text().replace("\n", "") for i in range(rows.count())} == names
        assert all(u.startswith("file:") for u in asked), asked
        _click_a_row_at_the_bottom_edge(page, rows, 12)
        assert _shown_in_view(page, page.locator(".pmg-card").nth(12), 800)
        assert page.locator("svg title").count() == len(names) and page.locator("table.pmg-heat td").count() > 0
        browser.close()


def _verdicts(page) -> list:
    """Each model's row of the verdict table: its name and its right/wrong marks (clean, adversarial)."""
    return page.eval_on_selector_all(".pmg-model", "rows => rows.map(r => [r.dataset.model, "
                                                   "[...r.querySelectorAll('.pmg-ok, .pmg-bad')].map(m => m.innerText)])")


def test_results_explain_themselves_and_a_shared_link_reopens_the_same_comparison(tmp_path):
    """At a desk and on a phone: no empty radius box before an attack (ticked or not); on a phone the
    settings come right under the button; after Attack, a summary over the verdicts and the maps as a
    grid with its headers; Share gives a link that, opened in a fresh browser, shows the same image's
    verdicts again (an upload at the desk, an example on the phone)."""
    from PIL import Image

    upload = tmp_path / "upload.png"
    Image.effect_noise((40, 48), 60).convert("RGB").save(upload)  # not one of the examples: kept for the link
    demo = app.build_app(tiny_models(), checkpoint_dir=tmp_path / "ckpt")
    port = _launch(demo)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            for width, height, phone in ((1280, 800, False), (390, 844, True)):
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
                page.locator("#pmg-attack").wait_for(timeout=60_000)
                assert not page.locator("#pmg-radius").is_visible()
                page.locator("#pmg-with-radius input").check()
                assert not page.locator("#pmg-radius").is_visible()  # ticked: still nothing before an attack
                page.locator("#pmg-with-radius input").uncheck()
                for empty in ("#pmg-maps", "#pmg-zip", "#pmg-files", "#pmg-share"):
                    assert not page.locator(empty).is_visible(), empty
                if phone:  # the settings right under the image and the button, the results after them
                    button, settings = (page.locator(s).bounding_box() for s in ("#pmg-attack", "#pmg-settings"))
                    assert 0 <= settings["y"] - (button["y"] + button["height"]) < 120, (button, settings)
                    page.locator("#pmg-examples .thumbnail-item").first.click()
                else:
                    page.locator("#pmg-image input[type=file]").set_input_files(str(upload))
                page.locator("#pmg-preview img").first.wait_for(timeout=30_000)
                page.locator("#pmg-attack").click()
                page.locator("#pmg-verdicts .pmg-summary").wait_for(timeout=120_000)
                heads = page.locator("#pmg-maps thead")
                heads.wait_for(timeout=120_000)
                words = heads.inner_text().replace("\u00ad", "")
                assert all(words.count(w) == n for w, n in (("clean image", 1), ("adversarial image", 1),
                                                             ("true class", 2), ("predicted class", 2),
                                                             ("saliency", 2))), words
                assert page.locator("#pmg-maps tbody tr").count() == 3  # a row per model
                summary, verdicts = page.locator(".pmg-summary").inner_text(), _verdicts(page)
                assert "of 3 models still right after the attack" in summary
                page.screenshot(path=str(ARTIFACTS / f"results-{width}.png"), full_page=True)
                page.locator("#pmg-share-button").click()
                link = page.locator("#pmg-link :is(textarea, input)")
                page.wait_for_function("() => document.querySelector('#pmg-link :is(textarea, input)')?.value"
                                       ".startsWith('http')", timeout=60_000)
                assert ("image=" if not phone else "example=blue-triangle.png") in link.input_value()
                fresh = browser.new_context(viewport={"width": width, "height": height}).new_page()
                fresh.goto(link.input_value(), timeout=60_000)
                fresh.locator("#pmg-verdicts .pmg-summary").wait_for(timeout=120_000)
                assert fresh.locator(".pmg-summary").inner_text() == summary
                assert _verdicts(fresh) == verdicts
                fresh.locator("#pmg-maps thead").wait_for(timeout=120_000)  # the link keeps the extras too
                fresh.context.close()
                page.close()
            browser.close()
    finally:
        demo.close()
