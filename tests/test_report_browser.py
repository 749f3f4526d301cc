"""The report in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``) via Selenium.

The page is opened from disk, as a user opens it: one small run folder with test images on
disk, predictions, three significant slices and maps, whose report is written once for the
module. Without the browser or Selenium the tests skip with the reason (``.ci/run`` installs
both; ``pytest -rs`` lists skips). With ``PNEUMOXAI_SCREENSHOTS=1`` they save
``docs/screenshots/report-1400.png`` and ``-800.png``.
"""

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pneumoxai.report import write_report
from test_report import BROWSER_ERRORS, add_browser_parts, make_run, results  # noqa: F401 (results: a fixture)

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[test])")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
WIDTHS = (1400, 800)
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does this)")


@pytest.fixture(scope="module")
def driver():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--hide-scrollbars", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def run(tmp_path_factory, results):  # noqa: F811 (the fixture imported above is its input)
    """The small run folder with what the browsers need, its report written once."""
    root = add_browser_parts(make_run(tmp_path_factory.mktemp("browser") / "run", results))
    write_report(root)
    return root


def _open(driver, run_dir, width):
    driver.set_window_size(width, 1000)
    driver.get((run_dir / "report.html").as_uri())
    driver.get_log("browser")  # only this page's messages below
    driver.refresh()
    inner = driver.execute_script("return window.innerWidth")
    assert width - 20 <= inner <= width  # the viewport the checks below are about


def _no_overflow_and_no_errors(driver, width):
    assert driver.execute_script("return document.documentElement.scrollWidth") <= width
    assert [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"] == []


def _rows(driver, section):
    """First-column texts of the visible rows of the section's first table."""
    table = driver.find_element(By.CSS_SELECTOR, f"#{section} table")
    return [row.find_element(By.TAG_NAME, "td").text for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")
            if row.is_displayed()]


@pytest.mark.parametrize("width", WIDTHS)
def test_no_horizontal_overflow_and_no_console_errors(driver, run, width):
    _open(driver, run, width)
    _no_overflow_and_no_errors(driver, width)
    assert driver.find_element(By.CSS_SELECTOR, "main section").get_attribute("id") == "summary"  # summary first
    scrolled = driver.execute_script(  # no table needs its scroll fallback, at 800 px either
        "return [...document.querySelectorAll('.scroll')].filter(d => d.scrollWidth > d.clientWidth + 1)"
        ".map(d => d.closest('section').id)")
    assert scrolled == []
    # The paint entry may be recorded a moment after the load event that get() waits for.
    first_paint = WebDriverWait(driver, 5).until(lambda d: d.execute_script(
        "const e = performance.getEntriesByType('paint').filter(e => e.name === 'first-contentful-paint');"
        "return e.length && e[0].startTime"))
    assert first_paint < 3000
    Select(driver.find_element(By.ID, "slice-select")).select_by_index(1)  # a grid and the large view fit too
    driver.find_element(By.CSS_SELECTOR, "#slice-grid figure").click()
    _no_overflow_and_no_errors(driver, width)
    if os.environ.get("PNEUMOXAI_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.find_element(By.CSS_SELECTOR, "#large-view button").click()
        driver.execute_script("document.getElementById('results').scrollIntoView()")  # a table, after the summary
        driver.save_screenshot(str(SCREENSHOTS / f"report-{width}.png"))


def test_clicking_a_header_sorts_the_results_table(driver, run):
    _open(driver, run, 1400)
    results_csv = pd.read_csv(run / "tables" / "results.csv", index_col="model")
    header = driver.find_element(By.XPATH, "//section[@id='results']//th[normalize-space()='ROC AUC']")
    header.click()
    ascending = [str(name) for name in results_csv["roc_auc"].sort_values(kind="stable").index]
    assert [name.removesuffix(" (primary)") for name in _rows(driver, "results")] == ascending
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert [name.removesuffix(" (primary)") for name in _rows(driver, "results")] == ascending[::-1]
    assert header.get_attribute("aria-sort") == "descending"


def test_typing_in_a_filter_box_hides_the_other_rows(driver, run):
    _open(driver, run, 1400)
    before = _rows(driver, "results")
    box = driver.find_element(By.CSS_SELECTOR, "#results input.filter")
    box.send_keys("m2")
    assert _rows(driver, "results") == ["m2"] and len(before) == 4
    box.clear()
    box.send_keys(" ")  # clear() fires no input event; a blank filter shows every row again
    assert _rows(driver, "results") == before
    assert len(driver.find_elements(By.CSS_SELECTOR, "main input.filter")) == len(
        driver.find_elements(By.CSS_SELECTOR, "main table"))


def _grid_names(driver, grid):
    return [figure.find_element(By.TAG_NAME, "strong").text
            for figure in driver.find_elements(By.CSS_SELECTOR, f"#{grid} figure.thumb")]


def test_clicking_a_slice_row_shows_its_images_errors_first(driver, run):
    _open(driver, run, 1400)
    row = driver.find_element(By.XPATH, "//section[@id='slices']//tbody/tr[td[1][normalize-space()='c == x']]")
    row.click()
    assert Select(driver.find_element(By.ID, "slice-select")).first_selected_option.text == "c == x (12 images)"
    assert _grid_names(driver, "slice-grid") == [f"img{i:02d}.png" for i in (8, 9, 10, 11, 40, 41, *range(42, 48))]
    assert driver.find_element(By.ID, "slice-count").text == "12 images"
    assert "chosen" in row.get_attribute("class")
    Select(driver.find_element(By.ID, "slice-select")).select_by_visible_text("a == x (16 images)")
    assert len(_grid_names(driver, "slice-grid")) == 16


def test_the_overlay_checkbox_hides_and_shows_the_maps(driver, run):
    _open(driver, run, 1400)
    Select(driver.find_element(By.ID, "slice-select")).select_by_index(1)
    overlays = driver.find_elements(By.CSS_SELECTOR, "#slice-grid img.overlay")
    assert len(overlays) == 16 and all(o.is_displayed() for o in overlays)
    toggle = driver.find_element(By.CSS_SELECTOR, "#browser input.map-toggle")
    toggle.click()
    assert not any(o.is_displayed() for o in overlays)
    assert all(img.is_displayed() for img in driver.find_elements(By.CSS_SELECTOR, "#slice-grid img.base"))
    toggle.click()
    assert all(o.is_displayed() for o in overlays)


@pytest.mark.parametrize("name, computed", [("img00.png", ["Grad-CAM", "Grad-CAM (gallery)", "SHAP"]),
                                            ("img02.png", ["Grad-CAM"])])
def test_the_large_view_shows_every_method_computed_for_the_image(driver, run, name, computed):
    _open(driver, run, 1400)
    Select(driver.find_element(By.ID, "slice-select")).select_by_index(1)
    driver.find_element(By.XPATH, f"//div[@id='slice-grid']/figure[.//strong[text()='{name}']]").click()
    dialog = driver.find_element(By.ID, "large-view")
    assert dialog.is_displayed() and dialog.find_element(By.ID, "large-title").text == name
    shown = [figure.find_element(By.TAG_NAME, "figcaption").text
             for figure in dialog.find_elements(By.CSS_SELECTOR, "figure.computed")]
    assert shown == computed
    for figure in dialog.find_elements(By.CSS_SELECTOR, "figure.computed"):
        assert figure.find_element(By.CSS_SELECTOR, "img.overlay").is_displayed()
    missing = dialog.find_elements(By.CSS_SELECTOR, "figure.missing")
    assert len(missing) == 3 - len(computed) and all("not computed" in f.text for f in missing)
    dialog.find_element(By.TAG_NAME, "button").click()
    assert not dialog.is_displayed()


def test_the_error_browser_lists_every_false_positive_and_false_negative(driver, run):
    _open(driver, run, 1400)
    results_csv = pd.read_csv(run / "tables" / "results.csv", index_col="model")
    expected = int(results_csv.loc["soft voting", "fp"] + results_csv.loc["soft voting", "fn"])
    names = WebDriverWait(driver, 5).until(lambda d: _grid_names(d, "error-grid"))
    assert len(names) == expected == len(BROWSER_ERRORS)
    assert sorted(names) == [f"img{i:02d}.png" for i in BROWSER_ERRORS]
    outcomes = [f.get_attribute("class").split()[-1] for f in driver.find_elements(By.CSS_SELECTOR, "#error-grid figure")]
    assert outcomes == sorted(outcomes, key=["FN", "FP"].index)  # false negatives first


def test_clicking_a_header_sorts_the_slices_table(driver, run):
    _open(driver, run, 1400)
    header = driver.find_element(By.XPATH, "//section[@id='slices']//th[normalize-space()='Images']")
    assert _rows(driver, "slices") == ["a == x", "b == x", "c == x"]  # ranked as failure_slices.csv
    header.click()
    assert _rows(driver, "slices") == ["c == x", "a == x", "b == x"]  # 12, 16 and 18 images
    header.click()
    assert _rows(driver, "slices") == ["b == x", "a == x", "c == x"]
