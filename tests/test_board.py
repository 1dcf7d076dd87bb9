"""The board and the cards' summaries: every accuracy with its n and 95% interval, rows in bands of
overlapping intervals (not a strict rank), numbers from equal manifests comparable whatever --limit
said, board.html readable offline, and a card's convergence saying how many images could move.
Cards and cells here are made by hand (tests/helpers.py), shaped as pmg_core/leaderboard/cards.py writes them."""
import csv
import io
import json
import re

from helpers import hand_card, write_cards

from pmg_core.leaderboard import board, card_stats, stats


def _ones(n: int, right: int) -> list[int]:
    return [1] * right + [0] * (n - right)


def _card(name: str, robust_right: int, clean_right: int = 80, n: int = 100, **kw) -> dict:
    """One dataset of n images: the first `right` right (so cards made here share their images)."""
    return hand_card(name, {"synth-shape": _ones(n, clean_right)}, {"synth-shape": _ones(n, robust_right)}, **kw)


def test_every_number_on_the_board_carries_its_n_and_its_95_interval(tmp_path):
    two = {"synth-shape": _ones(20, 15), "synth-colour": _ones(20, 9)}
    cards = [hand_card("a-model", two, {"synth-shape": _ones(20, 5), "synth-colour": _ones(20, 2)}),
             hand_card("b-model", two, {"synth-shape": _ones(20, 12), "synth-colour": _ones(20, 11)},
                       unaware={"synth-shape": _ones(20, 14), "synth-colour": _ones(20, 12)}, defense="ttc")]
    cards[0]["published"] = {"where": "Table 1", "protocol": "theirs", "what_differs": ["their note"], "averages": [
        {"metric": "robust Linf 8/255", "theirs": 30.0, "ours": 17.5, "difference": -12.5}]}
    write_cards(tmp_path, cards)
    board.write_board(tmp_path)
    clean = stats.average([(15, 20), (9, 20)])
    robust_a, robust_b = stats.average([(5, 20), (2, 20)]), stats.average([(12, 20), (11, 20)])
    md = (tmp_path / "board.md").read_text()
    assert f"| a-model | Linf 8/255 | 40 | {clean.points()} | {robust_a.points()} | - |" in md
    # Ours minus the authors' number carries our interval, shifted by theirs.
    assert md.rstrip().splitlines()[-1].endswith(
        f"| -12.5 [{100 * robust_a.low - 30:+.1f}, {100 * robust_a.high - 30:+.1f}] |")
    assert f"| b-model | Linf 8/255 | 40 | {clean.points()} | {robust_b.points()} | " \
           f"{stats.average([(14, 20), (12, 20)]).points()} |" in md
    assert "95% interval" in md and "n is the number of images" in md
    rows = list(csv.DictReader(io.StringIO((tmp_path / "board.csv").read_text())))
    assert [(r["model"], r["n"], float(r["robust_low"]), float(r["robust_high"])) for r in rows] == [
        ("b-model", "40", round(100 * robust_b.low, 2), round(100 * robust_b.high, 2)),
        ("a-model", "40", round(100 * robust_a.low, 2), round(100 * robust_a.high, 2))]
    html = (tmp_path / "board.html").read_text()
    cells = re.findall(r"<td class='acc[^']*'>(.*?)</td>", html)
    assert len(cells) == 2 * 3 and all(c == "-" or re.fullmatch(
        r"\d+\.\d<span class='ci'>\[\d+\.\d, \d+\.\d\]</span>", c) for c in cells)
    # A card shows each dataset's accuracy with its Wilson interval and n.
    card = board.card_html(cards[0])
    shown = f"<td>synth-colour</td><td>20</td><td>{stats.wilson(9, 20).points()}</td><td>{stats.wilson(2, 20).points()}"
    assert shown in card
    assert f"robust {stats.average([(5, 20), (2, 20)]).text()}" in card  # the average, with n = 40
    assert f"theirs 30.0, ours {robust_a.text()}, difference -12.5 [" in card


def test_the_board_orders_rows_in_bands_of_overlapping_intervals_not_by_rank():
    """zeta (60 of 100) and alpha (52) overlap: one band, listed by name; mid (35) lies wholly below zeta, so
    it starts band 2, and low (30) overlaps mid."""
    cards = [_card("zeta", 60), _card("alpha", 52), _card("mid", 35), _card("low", 30)]
    table = board.rows(cards)
    assert [(r["model"], r["band"]) for r in table] == [("alpha", 1), ("zeta", 1), ("low", 2), ("mid", 2)]
    assert table[1]["robust"].overlaps(table[0]["robust"]) and not table[3]["robust"].overlaps(table[1]["robust"])
    md = board.to_markdown(cards)
    assert md.index("| 1 | alpha |") < md.index("| 1 | zeta |") < md.index("| 2 | low |") < md.index("| 2 | mid |")
    assert "not ranked" in md and "not ranked" in board.table_html(cards)  # the page says what a band is


def test_a_limit_that_leaves_the_images_unchanged_keeps_the_numbers_comparable():
    """`--limit 4` on a protocol that draws 4 images a dataset takes the full run's images: the same label,
    band and paired test as the full run. A limit that takes fewer is labelled and kept apart."""
    full = _card("full", 2, n=4, samples=4)
    same = _card("limited-same", 1, n=4, samples=4, limit=4)
    fewer = _card("limited-fewer", 1, n=2, samples=4, limit=2, manifests={"synth-shape": "sha-of-two"})
    assert card_stats.protocol_label(same) == card_stats.protocol_label(full) == "mini v2"
    assert card_stats.protocol_label(fewer) == "mini v2 (limit 2: a subset of its images)"
    table = board.rows([full, same, fewer])
    assert {r["model"]: (r["protocol"], r["band"]) for r in table} == {
        "full": ("mini v2", 1), "limited-same": ("mini v2", 1),
        "limited-fewer": ("mini v2 (limit 2: a subset of its images)", 1)}
    assert card_stats.compare(full, same, "Linf 8/255").paired is not None
    assert "different images" in card_stats.compare(full, fewer, "Linf 8/255").why_not


def test_board_html_stands_alone_with_its_table_scatter_and_heatmap(tmp_path):
    cards = [_card("zeta", 60), _card("alpha", 52, defense="ttc", unaware={"synth-shape": _ones(100, 55)})]
    write_cards(tmp_path, cards)
    board.write_board(tmp_path)
    html = (tmp_path / "board.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched from elsewhere
    assert "<script src" not in html and "<link" not in html and len(html) < 200_000
    assert html.count("<tr class='pmg-row'") == 2 and html.count("<svg") == 1
    titles = re.findall(r"<title>(.*?)</title>", html)
    assert any(t.startswith("zeta (defense none): clean 80.0% [71.1, 86.7] (n = 100), robust 60.0%") for t in titles)
    heat = re.findall(r"<td style='[^']*' title='([^']*)'>(\d+)<small>n=(\d+)</small></td>", html)
    assert [(n, v) for _, v, n in heat] == [("100", "52"), ("100", "60")]  # the board's order: alpha, zeta
    assert all(re.search(r"robust \d+\.\d% \[\d+\.\d, \d+\.\d\] \(n = 100\)", t) for t, _, _ in heat)


# --- a card assembled from its cells ------------------------------------------------------------

def _cells(tmp_path, cells: dict[str, dict]):
    """Cells and manifests on disk for one model under a one-eps protocol, as a run leaves them."""
    from pmg_core.leaderboard.cards import Cell, ModelSpec
    from pmg_core.evaluation.protocols import Protocol, ThreatModel

    protocol = Protocol("hand", 1, "a protocol made by hand", tuple(cells), samples=10,
                        threats=(ThreatModel("Linf", (8,), "pgd", 10, 2),), convergence_samples=None)
    spec = ModelSpec("hand-model", "hand-model")
    made = []
    for ds, extra in cells.items():
        cell = Cell(spec, ds, protocol.threats[0], 8)
        right = extra.pop("robust_right")
        doc = {"run": {"protocol": "hand", "version": 1, "limit": None}, "model": "hand-model", "dataset": ds,
               "threat": cell.key, "norm": "Linf", "eps_255": 8, "manifest_sha256": f"sha-{ds}",
               "provenance": {"weights_sha256": "cd" * 32, "base": "clip-tiny", "method": "tecoa", "trainer": "",
                              "paper": "", "eps_255_trained": None},
               "device": "cpu", "code_version": "0.1.0+git.test", "n": 10, "clean_acc": 0.8,
               "robust_acc": sum(right) / 10,
               "preset": "paper", "seconds": 1.0, "samples": list(range(10)), "clean_right": _ones(10, 8),
               "robust_right": right, **extra}
        cell.path(tmp_path).parent.mkdir(parents=True, exist_ok=True)
        cell.path(tmp_path).write_text(json.dumps(doc))
        (tmp_path / "manifests").mkdir(exist_ok=True)
        (tmp_path / "manifests" / f"{ds}.json").write_text(json.dumps({"sha256": f"sha-{ds}"}))
        made.append(cell)
    return protocol, spec, made


def test_a_card_carries_per_image_results_intervals_and_what_its_convergence_check_saw(tmp_path):
    from pmg_core.leaderboard.cards import write_card

    moved = {"checked": True, "samples": list(range(6)), "robust_right": _ones(6, 4),
             "robust_right_doubled": [1, 1, 1, 0, 0, 0], "informative": 4}
    protocol, spec, cells = _cells(tmp_path, {
        "synth-shape": {"robust_right": _ones(10, 4), "convergence": moved},
        "synth-colour": {"robust_right": _ones(10, 6), "convergence": {"checked": False, "why": "by hand"}}})
    card = json.loads(write_card(protocol, spec, cells, tmp_path, None).read_text())
    shape = card["results"]["synth-shape"]
    assert shape["clean_right"] == _ones(10, 8) and shape["robust"]["Linf 8/255"]["robust_right"] == _ones(10, 4)
    assert shape["robust"]["Linf 8/255"]["robust_interval"] == [round(stats.wilson(4, 10).low, 6),
                                                              round(stats.wilson(4, 10).high, 6)]
    avg = card["averages"]
    assert avg["n"] == 20
    assert avg["robust_interval"]["Linf 8/255"][1] == round(stats.average([(4, 10), (6, 10)]).high, 6)
    conv = card["convergence"]
    # One of the 4 informative images fell when the budget doubled: -1 of the cell's 10 images, -10 points.
    change = stats.paired([moved["robust_right"]], [moved["robust_right_doubled"]]).difference
    assert (conv["status"], conv["informative"], conv["cells_checked"], conv["cells"]) == ("not converged", 4, 1, 2)
    assert conv["max_change"] == {"cell": "synth-shape at Linf 8/255", "change_points": -10.0, "interval_points": [
        round(100 * change.low * 0.6, 2), round(100 * change.high * 0.6, 2)]}
    assert conv["not_checked"] == ["synth-colour at Linf 8/255: by hand"] and not conv["converged"]
    words = card_stats.convergence_words(card)
    assert words.startswith("not converged: 4 informative images in 1 of 2 cells; largest change -10.0 points [")


def test_a_check_on_images_that_could_not_move_says_not_checked(tmp_path):
    """The issue's clip-tiny cards: no image still robust, so doubling the attack could change nothing."""
    from pmg_core.leaderboard.cards import write_card

    nothing = {"checked": True, "samples": [0, 1], "robust_right": [0, 0], "robust_right_doubled": [0, 0],
               "informative": 0}
    protocol, spec, cells = _cells(tmp_path, {"synth-shape": {"robust_right": _ones(10, 0), "convergence": nothing}})
    card = json.loads(write_card(protocol, spec, cells, tmp_path, None).read_text())
    assert card["convergence"]["status"] == "not checked" and not card["convergence"]["converged"]
    assert card_stats.convergence_words(card) == "not checked: no image could move"
    assert "not checked" in board.to_markdown([card])
