"""The MLflow UI in a real browser, as a person browses the runs.

`metaland ui` (what `make ui` runs) serves the ci profile's tracking database on 127.0.0.1, and
headless Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium; nothing is
downloaded) must show the experiments, the runs, a metric chart and a logged checkpoint. Every
expectation is read from the same database through MLflow's client, so the page is checked
against the store, not against a copy of it. Each test saves a screenshot in its temp folder.

The database is the one the "dag" tests build (conftest.ci_pipeline: one `dvc repro` of the ci
profile shared by xdist group "dag"), so this adds only the UI's start and a few page loads.
Skipped, saying why, only where Chromium is not installed; CI installs it (`make browser` in
.ci/run) and sets METALAND_REQUIRE_BROWSER=1, which turns that skip into a failure.
"""

from __future__ import annotations

import sys

import pytest
from mlflow import MlflowClient

from tests.pipeline import PAGE_TIMEOUT_S, free_port, headless_chromium, screenshot, serving

pytestmark = [pytest.mark.dag, pytest.mark.xdist_group("dag")]

# What the UI remembers in the browser: the classic runs views ("Model training", not GenAI) and
# the assistant panel closed, so the screenshots show the runs.
EXPANDER = "button[data-component-id*='runnamecellrenderer']"
"""The button that shows the stage runs nested under a pipeline run."""
UI_SETTINGS = {
    "mlflow.workflowType_v1": '"machine_learning"',
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
}


@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def ui(ci_pipeline, browser, tmp_path_factory):
    """(UI address, client of the same store): `metaland ui` in the ci checkout."""
    work, env, _ = ci_pipeline
    port = free_port()
    log = tmp_path_factory.mktemp("ui") / "ui.log"
    command = [sys.executable, "-m", "metaland", "ui", "--port", str(port), "--workers", "1"]
    with serving(command, port, log, cwd=work, env=env) as url:
        browser.get(f"{url}/#/")
        for key, value in UI_SETTINGS.items():
            browser.execute_script("window.localStorage.setItem(arguments[0], arguments[1]);", key, value)
        yield url, MlflowClient(f"sqlite:///{work / 'mlflow.db'}")


def wait_for(driver, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, PAGE_TIMEOUT_S).until(lambda d: condition(d))
    except TimeoutException:
        body = driver.find_element("tag name", "body").text
        raise AssertionError(
            f"{what} not shown at {driver.current_url} in {PAGE_TIMEOUT_S} s; page:\n{body[:3000]}"
        ) from None


def page_text(driver) -> str:
    return driver.find_element("tag name", "body").text


def visible(driver, text: str) -> list:
    """Displayed elements whose own text is exactly ``text``."""
    return [e for e in driver.find_elements("xpath", f"//*[normalize-space(text())='{text}']") if e.is_displayed()]


SCROLL_SCRIPT = """
for (const el of [document.scrollingElement, ...document.querySelectorAll('*')]) {
  if (el && el.scrollHeight > el.clientHeight + 1) { el.scrollTop += Math.max(200, el.clientHeight / 2); }
}
"""


def scrolled_to(driver, text: str) -> list:
    """``text`` visible, scrolling every scrollable area a half page further each time it is not: the UI
    draws only the charts in view, and a study logs more than one screen of them."""
    found = visible(driver, text)
    if not found:
        driver.execute_script(SCROLL_SCRIPT)
    return found


def experiment(client: MlflowClient, name: str = "metaland/guiroy2019"):
    found = client.get_experiment_by_name(name)
    assert found is not None, f"no experiment {name} in the ci store"
    return found


def test_the_experiments_are_listed(browser, ui, tmp_path):
    url, client = ui
    names = sorted(e.name for e in client.search_experiments() if e.name.startswith("metaland/"))
    assert {"metaland/data", "metaland/guiroy2019", "metaland/results"} <= set(names)
    browser.get(f"{url}/#/experiments")
    wait_for(browser, lambda d: all(visible(d, name) for name in names), f"experiments {names}")
    screenshot(browser, tmp_path / "experiments.png")


def test_the_runs_and_their_charts_are_shown(browser, ui, tmp_path):
    """The runs view of metaland/guiroy2019 with its metric charts: the screenshot of the ci runs."""
    url, client = ui
    study = experiment(client)
    runs = client.search_runs([study.experiment_id])
    parents = [run for run in runs if run.data.tags["metaland.stage"] == "pipeline"]
    names = {run.info.run_name for run in runs if run not in parents}
    assert {n.split("@")[0] for n in names} == {"train", "extract", "probe"} and parents
    browser.get(f"{url}/#/experiments/{study.experiment_id}/runs")
    pipelines = sorted(parent.info.run_name for parent in parents)
    wait_for(browser, lambda d: all(name in page_text(d) for name in pipelines), f"the pipeline runs {pipelines}")
    screenshot(browser, tmp_path / "runs-tree-collapsed.png")
    for expander in browser.find_elements("css selector", EXPANDER):
        expander.click()
    trains = sorted(name for name in names if name.startswith("train@"))
    wait_for(browser, lambda d: all(name in page_text(d) for name in trains), f"the train runs {trains}, nested")
    screenshot(browser, tmp_path / "runs-tree.png")
    browser.get(f"{url}/#/experiments/{study.experiment_id}/runs?compareRunsMode=CHART")
    wait_for(browser, lambda d: len(d.find_elements("css selector", ".js-plotly-plot")) >= 3, "metric charts")
    wait_for(browser, lambda d: scrolled_to(d, "probe/hessian_spectral_norm"), "the curvature chart")
    screenshot(browser, tmp_path / "runs-and-charts.png")


def test_a_metric_chart_plots_every_logged_step(browser, ui, tmp_path):
    url, client = ui
    study = experiment(client)
    train = client.search_runs(
        [study.experiment_id], "tags.`metaland.stage` = 'train' and params.algorithm = 'maml'", max_results=1
    )[0]
    steps = [m.step for m in client.get_metric_history(train.info.run_id, "train/query_loss")]
    assert len(steps) >= 2
    browser.get(f"{url}/#/experiments/{study.experiment_id}/runs/{train.info.run_id}/model-metrics")
    # The chart card titled query_loss, then the markers and line plotly draws in its trace layer.
    card = "//*[normalize-space(text())='query_loss']/ancestor::*[.//*[contains(@class, 'js-plotly-plot')]][1]"
    traces = f"{card}//*[contains(@class, 'scatterlayer')]"

    def points(driver) -> list:
        marker = "contains(concat(' ', normalize-space(@class), ' '), ' point ')"  # class token, not "points"
        return driver.find_elements("xpath", f"{traces}//*[{marker}]")

    wait_for(browser, lambda d: len(points(d)) == len(steps), f"query_loss chart with {len(steps)} points")
    lines = browser.find_elements("xpath", f"{traces}//*[contains(@class, 'js-line')]")
    assert any((line.get_attribute("d") or "").count("L") == len(steps) - 1 for line in lines), "one line through them"
    screenshot(browser, tmp_path / "metric-chart.png")


def test_a_logged_checkpoint_is_browsable(browser, ui, tmp_path):
    url, client = ui
    study = experiment(client)
    train = client.search_runs([study.experiment_id], "tags.`metaland.stage` = 'train'", max_results=1)[0]
    files = sorted(a.path.split("/")[-1] for a in client.list_artifacts(train.info.run_id, "checkpoints"))
    final = next(name for name in reversed(files) if name.endswith(".safetensors"))
    browser.get(f"{url}/#/experiments/{study.experiment_id}/runs/{train.info.run_id}/artifacts")
    wait_for(browser, lambda d: visible(d, "checkpoints"), "the checkpoints folder")
    visible(browser, "checkpoints")[0].click()
    wait_for(browser, lambda d: all(visible(d, name) for name in files), f"checkpoint files {files}")
    visible(browser, final)[0].click()
    wait_for(browser, lambda d: f"checkpoints/{final}" in page_text(d), f"the details of {final}")
    assert "KB" in page_text(browser) or "MB" in page_text(browser), "its size is shown"
    screenshot(browser, tmp_path / "checkpoint-artifact.png")
