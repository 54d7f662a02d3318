"""The viewer and the reports in a real headless browser (Chromium + chromedriver via Selenium, WebGL through
SwiftShader): no console errors, every part's colour on screen, the page's own toggles hide parts, the plots and
tables are there and the evaluation table sorts. Skips with the reason when no browser is installed."""
from __future__ import annotations

import csv
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from command_helpers import ellipsoid_parts, run_cli

from neural_parts.data.render import distinct_colours
from neural_parts.viewer import write_viewer

CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = os.environ.get("NEURAL_PARTS_SCREENSHOTS")  # a folder: keep the screenshots there to look at them


def _binaries() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, or why they cannot be used."""
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                   None)
    driver = shutil.which("chromedriver") or (CHROMEDRIVER if Path(CHROMEDRIVER).is_file() else None)
    if browser is None or driver is None:
        return "no chromium/chromedriver (Debian: apt-get install chromium chromium-driver)"
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    found = _binaries()
    if isinstance(found, str):
        pytest.skip(found)
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--window-size=1280,800", "--hide-scrollbars",
                 "--force-device-scale-factor=1", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(options=options, service=Service(found[1]))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def open_page(driver, path: Path, wait_for: str = "ready"):
    """Load a file:// page and wait until its script set body[data-<wait_for>]; returns the console messages."""
    driver.get_log("browser")  # drop earlier messages
    driver.get(path.resolve().as_uri())
    deadline = time.time() + 20
    while driver.execute_script(f"return document.body.dataset.{wait_for} || null") is None:
        assert time.time() < deadline, f"{path.name} did not finish loading: {driver.get_log('browser')}"
        time.sleep(0.05)
    return driver.get_log("browser")


def assert_no_errors(messages):
    errors = [m for m in messages if m["level"] in ("SEVERE", "WARNING") and "favicon" not in m["message"]]
    assert errors == [], errors


def canvas_pixels(driver, name: str) -> np.ndarray:
    from PIL import Image

    png = driver.find_element("id", "np-canvas").screenshot_as_png
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        Path(SHOTS, name).write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).astype(float)


def colour_counts(pixels: np.ndarray, palette: np.ndarray) -> list[int]:
    """Pixels that are a shade (x 0.25..1.05, the viewer's Lambert shading) of each palette colour."""
    counts = []
    for c in palette.astype(float):
        s = pixels @ c / (c @ c)
        residual = np.linalg.norm(pixels - s[:, None] * c, axis=1)
        counts.append(int(((s > 0.25) & (s < 1.05) & (residual < 8)).sum()))
    return counts


def wait_frames(driver, after: int):
    deadline = time.time() + 10
    while int(driver.execute_script("return document.body.dataset.frames")) <= after:
        assert time.time() < deadline, "the viewer did not redraw"
        time.sleep(0.02)


def test_viewer_shows_every_part_and_its_toggles_hide_them(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    palette = distinct_colours(5)
    rng = np.random.default_rng(0)
    points = rng.normal(size=(4000, 3))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    image = np.full((64, 64, 3), 200, np.uint8)
    path = write_viewer(tmp_path / "view.html", ellipsoid_parts(5), image=image, title="five parts",
                        target={"points": 0.45 * points, "normals": points}, metrics={"IoU": 0.5})
    assert_no_errors(open_page(browser, path))
    assert browser.execute_script("return window.npViewer.parts.length") == 5
    counts = colour_counts(canvas_pixels(browser, "viewer_all.png"), palette)
    assert min(counts) > 300, counts  # every part is on screen in its palette colour
    frames = int(browser.execute_script("return document.body.dataset.frames"))
    browser.find_element("id", "np-part-2").click()  # the page's own toggle
    ActionChains(browser).move_to_element(browser.find_element("id", "np-title")).perform()  # no hover highlight
    wait_frames(browser, frames)
    assert browser.execute_script("return window.npViewer.visible()") == [True, True, False, True, True]
    hidden = colour_counts(canvas_pixels(browser, "viewer_hidden.png"), palette)
    assert hidden[2] == 0 and min(hidden[:2] + hidden[3:]) > 300, hidden
    grey = np.array([[0.55, 0.58, 0.64]]) * 255
    before = colour_counts(canvas_pixels(browser, "viewer_no_target.png"), grey)[0]
    frames = int(browser.execute_script("return document.body.dataset.frames"))
    browser.find_element("id", "np-target").click()
    wait_frames(browser, frames)
    after = colour_counts(canvas_pixels(browser, "viewer_target.png"), grey)[0]
    assert after > before + 1000, (before, after)  # the target's points appear
    assert browser.find_element("css selector", "#np-metrics td:last-child").text == "0.5"
    assert browser.find_element("css selector", "#np-image img").get_attribute("naturalWidth") == "64"
    assert_no_errors(browser.get_log("browser"))


def test_viewer_hover_highlights_a_part_in_3d_and_in_the_list(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    palette = distinct_colours(3).astype(float)
    path = write_viewer(tmp_path / "view.html", ellipsoid_parts(3), names=["torso", "arm", "leg"])
    open_page(browser, path)
    canvas = browser.find_element("id", "np-canvas")
    pixels = canvas_pixels(browser, "hover_before.png")
    width = canvas.size["width"]
    s = pixels @ palette[1] / (palette[1] @ palette[1])
    mine = np.flatnonzero((np.linalg.norm(pixels - s[:, None] * palette[1], axis=1) < 8) & (s > 0.25))
    y, x = np.divmod(mine, width)
    frames = int(browser.execute_script("return document.body.dataset.frames"))
    ActionChains(browser).move_to_element_with_offset(  # offsets from the canvas centre
        canvas, int(np.median(x)) - width // 2, int(np.median(y)) - canvas.size["height"] // 2).perform()
    wait_frames(browser, frames)
    hovered = browser.find_elements("css selector", "#np-parts li.np-hover")
    assert [li.get_attribute("data-part") for li in hovered] == ["1"]
    assert browser.find_element("id", "np-tip").text == "arm"
    counts = colour_counts(canvas_pixels(browser, "hover_arm.png"), palette)
    assert counts[0] < 50 and counts[2] < 50  # the other parts fade
    frames = int(browser.execute_script("return document.body.dataset.frames"))
    ActionChains(browser).move_to_element(browser.find_elements("css selector", "#np-parts li")[2]).perform()
    wait_frames(browser, frames)
    assert [li.get_attribute("data-part") for li in
            browser.find_elements("css selector", "#np-parts li.np-hover")] == ["2"]
    counts = colour_counts(canvas_pixels(browser, "hover_leg.png"), palette)
    assert counts[0] < 50 and counts[1] < 50, counts
    assert_no_errors(browser.get_log("browser"))


def test_viewer_orbit_and_zoom_change_the_view(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    path = write_viewer(tmp_path / "view.html", ellipsoid_parts(2), title="two parts")
    open_page(browser, path)
    canvas = browser.find_element("id", "np-canvas")
    start = browser.execute_script("return window.npViewer.camera()")
    ActionChains(browser).move_to_element(canvas).click_and_hold().move_by_offset(60, 20).release().perform()
    moved = browser.execute_script("return window.npViewer.camera()")
    assert moved["azimuth"] < start["azimuth"] and moved["elevation"] > start["elevation"]
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, 300).perform()
    assert browser.execute_script("return window.npViewer.camera()")["distance"] > moved["distance"]
    assert_no_errors(browser.get_log("browser"))


def test_command_viewers_load_without_errors(browser, tmp_path, trained_run, dataset, env):
    out = tmp_path / "rec"
    proc = run_cli("reconstruct", trained_run, f"{dataset / 'val.h5'}:0", "--output", out, "--min-vertices", 600,
                   env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for page in (out / "view.html", trained_run / "views" / "val_0.html"):
        assert_no_errors(open_page(browser, page))
        assert len(browser.find_elements("css selector", "#np-parts li")) == 2
        assert browser.find_element("id", "np-target-row").is_displayed()
        colours = colour_counts(canvas_pixels(browser, f"command_{page.parent.name}.png"), distinct_colours(2))
        assert max(colours) > 100, colours


def test_run_report_loads_with_its_plots_previews_and_viewer(browser, trained_run):
    assert_no_errors(open_page(browser, trained_run / "report.html"))
    if SHOTS:
        browser.save_screenshot(str(Path(SHOTS, "report.png")))
    titles = [e.get_attribute("aria-label") for e in browser.find_elements("css selector", "svg.np-plot")]
    assert {"IoU", "loss", "chamfer loss", "wall clock per step (validation included)"} <= set(titles)
    slider = browser.find_element("css selector", ".np-previews input[type=range]")
    assert slider.get_attribute("max") == str(len(list((trained_run / "previews").glob("step_*.png"))) - 1)
    label = browser.find_element("css selector", ".np-frame-label").text
    assert label.startswith("step 4 · validation IoU")
    assert browser.execute_script("return document.querySelector('.np-previews img').naturalWidth") > 0
    frame = browser.find_element("css selector", ".np-viewer iframe")
    browser.switch_to.frame(frame)
    deadline = time.time() + 20
    while browser.execute_script("return document.body.dataset.ready || null") is None:
        assert time.time() < deadline, "the embedded viewer did not load"
        time.sleep(0.05)
    assert len(browser.find_elements("css selector", "#np-parts li")) == 2
    browser.switch_to.default_content()
    assert_no_errors(browser.get_log("browser"))


def test_evaluation_table_sorts_by_a_clicked_column(browser, evaluation):
    out, _ = evaluation
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert_no_errors(open_page(browser, out.with_suffix(".html")))
    from neural_parts.evaluate import COLUMNS

    header = dict(zip(COLUMNS, browser.find_elements("css selector", "#np-shapes th")))

    def column(name):
        k = list(header).index(name)
        return [float(td.get_attribute("data-sort")) for td in
                browser.find_elements("css selector", f"#np-shapes tbody td:nth-child({k + 1})")]

    header["iou"].click()
    assert column("iou") == sorted(float(r["iou"]) for r in rows)
    header["iou"].click()
    assert column("iou") == sorted((float(r["iou"]) for r in rows), reverse=True)
    header["chamfer_l1"].click()
    assert column("chamfer_l1") == sorted(float(r["chamfer_l1"]) for r in rows)
    names = [td.text for td in browser.find_elements("css selector", "#np-shapes tbody td:nth-child(2)")]
    by_chamfer = sorted(rows, key=lambda r: float(r["chamfer_l1"]))
    assert names == [r["name"] for r in by_chamfer]  # whole rows move, not one column
    assert len(browser.find_elements("css selector", ".np-shot img")) == 3
