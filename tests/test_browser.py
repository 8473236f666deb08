"""The MLflow UI as a person sees it (issue 10): `mlflow ui` on 127.0.0.1 against a store holding a
small sweep made by the runner, opened in headless Chromium (Debian's, driven by Playwright: no
browser download). Screenshots go to $RUNNER_SCREENSHOTS (default: the test's temporary directory)."""

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import cli, free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """(base URL, run ids of the sweep's jobs, screenshot folder, store URI)."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run does)")
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (the [test] extra)")
    tmp = tmp_path_factory.mktemp("ui")
    done = cli("-m", "optimizer=adam,sgd", "loop.epochs=2", "dataset.limit=200", "loop.verbose=0", "note=browser check",
               cwd=tmp, timeout=900)
    assert done.returncode == 0, done.stderr
    port = free_port()
    server = subprocess.Popen(["mlflow", "ui", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--host", "127.0.0.1",
                               "--port", str(port)], cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(base, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        import mlflow

        client = mlflow.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
        runs = client.search_runs(["1"], "tags.`mlflow.parentRunId` != ''", order_by=["attributes.start_time ASC"])
        shots = Path(os.environ.get("RUNNER_SCREENSHOTS", tmp / "screenshots"))
        shots.mkdir(parents=True, exist_ok=True)
        yield base, [r.info.run_id for r in runs], shots, f"sqlite:///{tmp / 'mlflow.db'}"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def page(ui):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-dev-shm-usage", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        yield page
        browser.close()


def settle(page, quiet_ms=500, timeout_ms=30_000):
    """Wait until the page stops drawing: its text and its number of charts and images unchanged for
    `quiet_ms` (the UI polls its server for ever, so the network is never idle)."""
    page.wait_for_function("""([quiet, started]) => {
        const now = document.body.innerText.length + ':' + document.querySelectorAll('canvas, svg, img').length;
        if (window.__settle === undefined || window.__settle.state !== now) window.__settle = {state: now, since: Date.now()};
        return Date.now() - window.__settle.since >= quiet;
    }""", arg=[quiet_ms, 0], polling=100, timeout=timeout_ms)


def visit(page, url, shot, wait_for):
    page.goto(url)
    page.get_by_text(wait_for).first.wait_for(timeout=60_000)
    settle(page)
    page.screenshot(path=shot, full_page=True)
    return page.inner_text("body")


def test_runs_list_shows_the_jobs_with_dataset_and_model(ui, page):
    base, runs, shots, _ = ui
    query = urllib.parse.urlencode({"workflowType": "machine_learning", "searchFilter": "params.dataset = 'digits'",
                                    "orderByKey": "metrics.`val_accuracy`", "orderByAsc": "false"})
    text = visit(page, f"{base}/#/experiments/1/runs?{query}", shots / "runs.png", "optimizer=sgd")
    assert "optimizer=adam" in text and "2 matching runs" in text
    assert text.count("digits-train") == 2 and text.count("digits-test") == 2  # the Dataset column, each job
    assert "Models" in text and text.count("\nmodel\n") == 2  # the Models column: each job's logged model


def test_run_page_shows_model_datasets_description(ui, page):
    base, runs, shots, _ = ui
    text = visit(page, f"{base}/#/experiments/1/runs/{runs[0]}?workflowType=machine_learning", shots / "run.png",
                 "browser check")
    assert "browser check. seed_cnn (functional) on digits" in text and "test accuracy" in text
    assert "digits-train" in text and "+2" in text  # three datasets: train shown, two more folded
    assert "runner.version.keras" in text and "runner.command" in text  # the environment record
    page.get_by_text("Description").first.scroll_into_view_if_needed()
    page.screenshot(path=shots / "run-lower.png")
    assert "Logged models" in text or "Models" in text


def test_run_artifacts_show_the_figures(ui, page):
    base, runs, shots, _ = ui
    text = visit(page, f"{base}/#/experiments/1/runs/{runs[0]}/artifacts?workflowType=machine_learning",
                 shots / "artifacts.png", "figures")
    assert "figures" in text and "per_class.json" in text and "environment" in text
    page.get_by_text("figures", exact=True).first.click()
    with page.expect_response(lambda r: "confusion_matrix.png" in urllib.parse.unquote(r.url), timeout=30_000):
        page.get_by_text("confusion_matrix.png").first.click()
    # The figure is drawn: an image the browser decoded, figure-sized (a broken one has no width, icons are small).
    page.wait_for_function("() => Array.from(document.images).some(i => i.complete && i.naturalWidth >= 200)",
                           timeout=30_000)
    page.screenshot(path=shots / "figure.png", full_page=True)


def test_system_metrics_tab_has_charts(ui, page):
    base, runs, shots, _ = ui
    text = visit(page, f"{base}/#/experiments/1/runs/{runs[0]}/system-metrics?workflowType=machine_learning",
                 shots / "system.png", "cpu_utilization_percentage")
    assert "system_memory_usage_megabytes" in text


def test_compare_view_of_two_runs_opens(ui, page):
    base, runs, shots, _ = ui
    query = urllib.parse.urlencode({"runs": json.dumps(runs[:2]), "experiments": json.dumps(["1"])})
    text = visit(page, f"{base}/#/compare-runs?{query}", shots / "compare.png", "optimizer=sgd")
    assert "optimizer=adam" in text and "test_accuracy" in text


def test_the_runner_view_lands_on_the_metric_columns(ui, page):
    """MLflow keeps columns out of the URL; a shared view (an experiment tag) opened by its key shows them."""
    import mlflow

    from runner.record import landing

    base, runs, shots, store = ui
    tags = mlflow.MlflowClient(store).get_experiment("1").tags
    assert json.loads(tags[landing.TAG])["orderByKey"] == "metrics.`val_accuracy`"  # written by the runs: validation ranks
    page.set_viewport_size({"width": 2600, "height": 1000})  # every column in view: the grid draws only those
    try:
        text = visit(page, landing.runs_url(base, "1"), shots / "landing.png", "optimizer=sgd")
    finally:
        page.set_viewport_size({"width": 1600, "height": 1000})
    assert "shared view" in text and "Sort: val_accuracy" in text
    assert all(column in text for column in ("val_accuracy", "test_loss", "learning_rate", "Metrics", "Parameters"))
