"""report.html: the run as one self-contained web page, checked in its parts and in a real (headless) browser."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil

import pytest

from imgcls.report.htmlreport import GALLERY_RIGHT, GALLERY_WRONG, gallery_picks, per_class_scores

# rows: true class, columns: predicted
CONFUSION = [[5, 1, 0],
             [2, 3, 1],
             [0, 0, 0]]  # class 2: no test images, and predicted once


def test_per_class_scores_by_hand():
    scores = per_class_scores(CONFUSION)
    # class 0: 5 right of 6 images, 5 of the 7 predicted as 0 are right
    assert scores[0]["recall"] == pytest.approx(5 / 6)
    assert scores[0]["precision"] == pytest.approx(5 / 7)
    assert scores[0]["f1"] == pytest.approx(2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6))
    # class 1: 3 right of 6, 3 of the 4 predicted as 1
    assert (scores[1]["recall"], scores[1]["precision"]) == (pytest.approx(0.5), pytest.approx(0.75))
    assert scores[1]["f1"] == pytest.approx(0.6)
    # class 2: no images (recall 0), predicted once wrongly (precision 0): F1 0, not a division by zero
    assert scores[2] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert [s["support"] for s in scores] == [6, 6, 0]


def test_per_class_scores_match_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn (the bench extra) is not installed")
    truth = [i for i, row in enumerate(CONFUSION) for j, n in enumerate(row) for _ in range(n)]
    guess = [j for i, row in enumerate(CONFUSION) for j, n in enumerate(row) for _ in range(n)]
    precision, recall, f1, _ = metrics.precision_recall_fscore_support(truth, guess, labels=[0, 1, 2],
                                                                       zero_division=0)
    scores = per_class_scores(CONFUSION)
    assert [s["precision"] for s in scores] == pytest.approx(list(precision))
    assert [s["recall"] for s in scores] == pytest.approx(list(recall))
    assert [s["f1"] for s in scores] == pytest.approx(list(f1))


def test_gallery_picks_the_surest_mistakes_and_each_class_in_turn():
    import torch

    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    predicted = torch.tensor([0, 0, 1, 1, 0, 2, 2, 0])
    confidence = torch.tensor([0.9, 0.8, 0.95, 0.5, 0.6, 0.99, 0.7, 0.4])
    wrong, right = gallery_picks(confidence, predicted, labels, wrong=2, right=4)
    assert wrong == [2, 4]  # the wrong ones, surest first (index 7, at 0.4, is left out)
    # the best hit of each class first (5, 0, 3), then the second best (1, then 6 is cut); surest first
    assert right == [5, 0, 1, 3]


def _images(html: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]*)"', html)


def test_every_finished_run_has_a_self_contained_page(tiny_cifar_run):
    run, result = tiny_cifar_run
    assert "web page:" in result.output
    html = (run / "report.html").read_text()
    sources = _images(html)
    assert len(sources) == 3 + GALLERY_WRONG + GALLERY_RIGHT  # curves, confusion, templates and the gallery
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="(?!data:)', html), "the page refers to something outside itself"
    assert "<script" not in html
    metrics = json.loads((run / "metrics.json").read_text())
    scores = per_class_scores(metrics["test_detail"]["confusion"])
    table = html.split('id="per-class"')[1].split("</table>")[0]
    for name, score in zip(metrics["classes"], scores):
        row = table.split(f"<td>{name}</td>")[1].split("</tr>")[0]
        assert f"{100 * score['precision']:.1f}%" in row and f"{score['f1']:.3f}" in row
    assert html.count("&rarr;") == GALLERY_WRONG  # every wrong thumbnail names the class it was taken for


def test_report_html_rewrites_the_page(cli, assert_ok, tiny_cifar_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_cifar_run[0], run)
    (run / "report.html").unlink()
    result = cli("report", run, "--html", "--no-figures", "--json")
    assert_ok(result)
    assert json.loads(result.stdout)["html"] == str(run / "report.html")
    assert "Most confidently wrong" in (run / "report.html").read_text()


def test_unfinished_run_gets_a_page_without_gallery(cli, assert_ok, tiny_cifar_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_cifar_run[0], run)
    (run / "metrics.json").unlink()
    assert_ok(cli("report", run, "--html", "--no-figures"))
    html = (run / "report.html").read_text()
    assert "the run did not finish" in html and "imgcls train --resume" in html
    assert 'id="per-class"' not in html


def test_report_html_of_a_folder_that_is_no_run(cli, assert_user_error, tmp_path):
    assert_user_error(cli("report", tmp_path, "--html"), "not a run folder")
    assert not (tmp_path / "report.html").exists()


def test_a_page_that_fails_is_a_warning(tmp_path, capsys):
    from imgcls.cli.app import _write_page_or_warn
    from imgcls.report.report import Reporter

    _write_page_or_warn(tmp_path / "gone", Reporter(quiet=True))
    assert "warning: could not write report.html" in capsys.readouterr().err


# --- the page in a real browser -------------------------------------------------------------------------

CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through selenium, with the system's chromedriver (nothing is downloaded). Missing: a
    skip on a developer's machine, a failure under CI (.ci/run installs Debian's chromium and chromium-driver)."""
    driver_path = shutil.which("chromedriver") or CHROMEDRIVER
    missing = [what for what, there in (("chromium", shutil.which("chromium")),
                                        ("chromedriver", os.path.exists(driver_path))) if not there]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (the test extra)")
    if missing:
        why = f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver; pip install selenium)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must test the page in a browser: {why}", pytrace=False)
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


def test_page_in_a_browser(browser, tiny_cifar_run, tmp_path):
    page = tiny_cifar_run[0] / "report.html"
    browser.get(page.as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
    assert len(images) == 3 + GALLERY_WRONG + GALLERY_RIGHT
    broken = [alt for alt, complete, width, height in images if not (complete and width > 0 and height > 0)]
    assert not broken, f"images that did not load: {broken}"
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [name for name in fetched if not name.startswith("data:")] == []
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, f"console errors: {errors}"
    assert browser.find_element("id", "per-class").is_displayed()
    screenshot = tmp_path / "report.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000


def test_template_names_are_at_least_20_pixels_high_on_the_page(browser, tiny_cifar_run, tmp_path):
    """The templates figure is shown large: in a screenshot of the page (1200 pixels wide), the first row of class
    names is measured twice: by the figure's geometry (each name's text box, ascender to descender, as matplotlib
    lays it out, scaled as the page shows the PNG) and by its ink (the dark pixels inside those boxes)."""
    import io

    import numpy as np
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    from imgcls.report.templates import GRID_DPI, grid_columns, grid_figure, grid_title

    run = tiny_cifar_run[0]
    classes = json.loads((run / "metrics.json").read_text())["classes"]
    figure = grid_figure(torch.zeros(len(classes), 3, 32, 32), classes, grid_title("pixel", "each", "natural"))
    renderer = FigureCanvasAgg(figure).get_renderer()
    height = figure.get_figheight() * GRID_DPI
    boxes = [text.get_window_extent(renderer) for text in figure.axes[0].texts[:grid_columns(len(classes))]]
    browser.get((run / "report.html").as_uri())
    image = browser.find_element("css selector", 'img[alt="class templates"]')
    browser.execute_script("arguments[0].scrollIntoView(true)", image)
    left, top, width, natural, ratio = browser.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return [r.left, r.top, r.width, arguments[0].naturalWidth, window.devicePixelRatio]", image)
    scale = width / natural * ratio  # screen pixels per PNG pixel
    shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("L"))
    for box in boxes:
        assert box.height * scale >= 20, f"a name's text box is {box.height * scale:.1f} pixels high"
    x0, x1 = round(left * ratio + boxes[0].x0 * scale), round(left * ratio + boxes[0].x1 * scale)
    y0, y1 = (round(top * ratio + (height - box_y) * scale) for box_y in (boxes[0].y1, boxes[0].y0))
    ink_rows = np.flatnonzero((shot[y0 - 2:y1 + 2, x0 - 2:x1 + 2] < 128).any(1))
    ink = int(ink_rows[-1] - ink_rows[0] + 1)
    assert classes[0] == "airplane" and ink >= 20, f"'{classes[0]}' is {ink} pixels high on the page"
    Image.fromarray(shot).save(tmp_path / "templates-on-the-page.png")
