"""The dashboard in headless Chromium against the real stack: what a person sees, with screenshots."""

from __future__ import annotations

import os

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.api.conftest import png_bytes, sample_image
from tests.integration.conftest import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CLASS_NAMES = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"}


def points(element) -> int:
    return int(element.get_attribute("data-points"))


def fill(browser, field: str, value: str) -> None:
    box = browser.find(f"#train-{field}")
    box.clear()
    box.send_keys(value)


@pytest.fixture(scope="module")
def trained(stack) -> str:
    """Two small models trained through the API (so there is something to compare); the newest's id."""
    for variant in ("builtin", "scratch"):
        job_id = stack.client.post("/train", json={"variant": variant, "epochs": 2, "batch_size": 64}).json()["job_id"]
        assert stack.wait_job(job_id, {"succeeded", "failed", "cancelled"})["status"] == "succeeded"
    return job_id


def test_dashboard_starts_a_job_and_its_curves_grow_live(browser, stack):
    browser.open("/")
    browser.wait("#train-form")
    browser.screenshot("jobs-empty")
    fill(browser, "epochs", "4")
    fill(browser, "batch_size", "2")  # 256 steps an epoch: long enough to watch it grow, on a fast engine
    fill(browser, "lr", "0.5")
    browser.find("#train-submit").click()
    browser.wait("#train-follow").click()

    progress = browser.wait("#chart-progress", check=lambda e: points(e) >= 2, timeout=60)
    seen = points(progress)
    browser.screenshot("job-live")
    status = browser.find("#job-status").text
    assert status in ("running", "succeeded"), status
    # more points arrive without reloading the page
    browser.wait("#chart-progress", check=lambda e: points(e) > seen or browser.find("#job-status").text != "running",
                 timeout=30)
    browser.wait("#job-final", timeout=90)
    assert "Final test accuracy" in browser.find("#job-final").text
    assert points(browser.find("#chart-epochs")) == 4
    assert points(browser.find("#chart-progress")) > seen
    assert browser.find("#job-live").get_attribute("data-mode") == "stream"  # followed by the job's event stream
    assert "succeeded" in browser.find("#job-status").text
    assert browser.find("#job-model-link").get_attribute("href").endswith("#/models/" + stack.client.get(
        "/jobs").json()["data"][0]["job_id"])
    browser.screenshot("job-succeeded")


def test_dashboard_shows_validation_errors_beside_the_field(browser, stack):
    before = stack.client.get("/jobs").json()["count"]
    browser.open("/")
    browser.wait("#train-form")
    browser.expect_error("/train - Failed to load resource: the server responded with a status of 422")
    fill(browser, "epochs", "0")
    fill(browser, "batch_size", "1")
    browser.find("#train-submit").click()
    error = browser.wait("#train-epochs-error", check=lambda e: e.text != "")
    assert "greater than or equal to 1" in error.text
    assert "greater than or equal to 2" in browser.find("#train-batch_size-error").text
    assert browser.find("#train-epochs").get_attribute("aria-invalid") == "true"
    assert stack.client.get("/jobs").json()["count"] == before  # nothing was queued
    browser.screenshot("jobs-validation")


def test_dashboard_cancels_a_job_with_its_button(browser, stack):
    browser.open("/")
    browser.wait("#train-form")
    fill(browser, "epochs", "100")
    fill(browser, "batch_size", "2")
    browser.find("#train-submit").click()
    browser.wait("#train-follow")
    job_id = stack.client.get("/jobs", params={"limit": 1}).json()["data"][0]["job_id"]
    wait_for(lambda: stack.job(job_id)["status"] == "running", 60, "the long job never ran")
    button = browser.wait(f'tr[data-job-id="{job_id}"] button[data-cancel]', check=lambda e: e.is_displayed())
    browser.wait(f'tr[data-job-id="{job_id}"]', check=lambda e: e.get_attribute("data-status") == "running")
    assert "No jobs yet" not in browser.find("#jobs-table").text
    browser.screenshot("jobs-running")
    button.click()
    browser.wait(f'tr[data-job-id="{job_id}"]', check=lambda e: e.get_attribute("data-status") == "cancelled",
                 timeout=20)
    row = browser.find(f'tr[data-job-id="{job_id}"]')
    assert "cancelled" in row.text
    assert not row.find_element(By.CSS_SELECTOR, "button[data-cancel]").is_displayed()
    Select(browser.find("#status-filter")).select_by_value("cancelled")
    browser.wait(f'tr[data-job-id="{job_id}"]')
    assert all(r.get_attribute("data-status") == "cancelled" for r in browser.find_all("tr[data-job-id]"))


def test_dashboard_lists_a_jobs_served_model_accuracy(browser, stack, trained):
    record = stack.job(trained)
    final = record["final_test_acc"]
    assert final is not None and record["params"]["precise_bn"]  # the served model's, after precise BN
    browser.open("/")
    row = browser.wait(f'tr[data-job-id="{trained}"]', check=lambda e: e.get_attribute("data-status") == "succeeded")
    cell = row.find_elements(By.CSS_SELECTOR, "td")[5]
    # the model's accuracy, labelled as such (not the last epoch's moving-average test accuracy)
    assert cell.text == f"{100 * final:.2f}% served model"
    browser.screenshot("jobs-served-accuracy", full_page=False)


def test_dashboard_draws_a_models_batchnorm_layers(browser, stack, trained, tmp_path):
    browser.driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    assert stack.client.put(f"/models/{trained}/aliases/champion").status_code == 200
    browser.open("/#/models")
    browser.wait(f'tr[data-model-id="{trained}"]')
    assert browser.find(f'tr[data-model-id="{trained}"] .badge.alias').text == "champion"
    default = stack.client.get("/models").json()["default_model_id"]
    assert browser.find(f'tr[data-model-id="{default}"] .badge.default').text == "default"
    stack.client.delete(f"/models/{trained}/aliases/champion").raise_for_status()
    browser.wait("#chart-overlay", check=lambda e: points(e) >= 2)
    ticked = [box for box in browser.find_all("#models-table input[type=checkbox]") if box.is_selected()]
    assert len(ticked) >= 2  # the newest models start selected
    legend = browser.find_all("#chart-overlay .u-legend .u-series")
    assert len(legend) == 1 + len(ticked)  # x, then one curve per model
    ticked[0].click()
    browser.wait("#chart-overlay .u-legend", check=lambda e: len(e.find_elements(By.CSS_SELECTOR, ".u-series")) == len(ticked))
    browser.screenshot("models")
    browser.find(f'tr[data-model-id="{trained}"] a').click()
    browser.wait(".bn-layer figure.chart", check=lambda e: points(e) > 0)
    layers = stack.client.get(f"/models/{trained}/batchnorm").json()["layers"]
    sections = browser.find_all(".bn-layer")
    assert len(sections) == len(layers) == 4
    for section, layer in zip(sections, layers, strict=True):
        figures = section.find_elements(By.CSS_SELECTOR, "figure.chart")
        assert [f.get_attribute("data-param") for f in figures] == ["gamma", "beta", "running_mean", "running_var"]
        assert all(points(f) == layer["num_features"] for f in figures)
        assert f"net[{layer['name']}]" in section.text
    browser.screenshot("model-batchnorm")
    link = browser.find("#model-download")
    assert link.get_attribute("href").endswith(f"/models/{trained}/checkpoint")
    link.click()
    saved = tmp_path / f"{trained}.safetensors"
    wait_for(saved.exists, 20, f"the checkpoint was not downloaded: {list(tmp_path.iterdir())}")
    wait_for(lambda: saved.read_bytes() == (stack.checkpoint_dir / saved.name).read_bytes(), 10, "partial download")


def test_dashboard_shows_a_models_lineage_as_links(browser, stack, trained):
    def train_from(parent: str) -> str:
        body = {"variant": "scratch", "epochs": 1, "batch_size": 64, "init_model": parent}
        job_id = stack.client.post("/train", json=body).json()["job_id"]
        assert stack.wait_job(job_id, {"succeeded", "failed", "cancelled"})["status"] == "succeeded"
        return job_id

    child = train_from(trained)
    grandchild = train_from(child)
    browser.open(f"/#/models/{child}")
    parent_link = browser.wait("#model-parent a")
    assert parent_link.text == trained and parent_link.get_attribute("href").endswith(f"#/models/{trained}")
    children = browser.wait("#model-children a")
    assert children.text == grandchild and children.get_attribute("href").endswith(f"#/models/{grandchild}")
    browser.screenshot("model-lineage")
    parent_link.click()
    link = browser.wait(f'#model-children a[href$="#/models/{child}"]')
    assert link.text == child and browser.find("#model-parent").text == "fresh weights"

    browser.open(f"/#/jobs/{child}")
    started = browser.wait('[data-fact="Started from"] a')
    assert started.text == trained and started.get_attribute("href").endswith(f"#/models/{trained}")

    # A parent whose checkpoint fails verification is there, but not usable: said so, not "deleted".
    path = stack.checkpoint_dir / f"{child}.safetensors"
    good = path.read_bytes()

    def put(data: bytes) -> None:  # a new version of the file, as a store writes one (the listing sees it)
        (tmp := path.with_suffix(".tmp")).write_bytes(data)
        os.replace(tmp, path)

    put(good[:-5] + bytes([good[-5] ^ 0xFF]) + good[-4:])
    wait_for(lambda: child in [u["model_id"] for u in stack.client.get("/models").json()["unusable"]], 10,
             "the API never listed the damaged checkpoint as unusable")  # its listing looks once a second
    browser.open(f"/#/models/{grandchild}")
    broken = browser.wait("#model-parent", check=lambda e: "verification" in e.text, timeout=30)
    assert broken.text == f"{child} (fails verification)"
    put(good)
    browser.open("/#/models")  # away, so that coming back renders the page again

    assert stack.client.delete(f"/models/{child}").status_code == 204
    browser.open(f"/#/models/{grandchild}")
    parent = browser.wait("#model-parent", check=lambda e: "deleted" in e.text)
    assert parent.text == f"{child} (deleted)" and not parent.find_elements(By.CSS_SELECTOR, "a")
    browser.screenshot("model-lineage-deleted-parent")


def test_dashboard_predicts_an_uploaded_image(browser, stack, trained, tmp_path):
    image = tmp_path / "item.png"
    image.write_bytes(png_bytes(sample_image(3)))
    browser.open("/#/predict")
    default = stack.client.get("/models").json()["default_model_id"]  # what /predict serves unnamed
    browser.wait("#predict-model option[value='']", check=lambda e: default[:8] in e.text)
    browser.wait("#predict-file").send_keys(str(image))
    answer = browser.wait("#predict-class", check=lambda e: e.text in CLASS_NAMES)
    bars = browser.find_all("#predict-probs li")
    assert len(bars) == 10 and {b.get_attribute("data-class") for b in bars} == CLASS_NAMES
    assert "item.png" in browser.find("#predict-source").text
    predicted = answer.text
    browser.screenshot("predict-upload")
    # a bundled Fashion-MNIST test image, with its true label
    browser.find("#predict-random").click()
    browser.wait("#predict-answer", check=lambda e: "true label" in e.text)
    assert browser.find("#predict-class").text in CLASS_NAMES
    assert predicted in CLASS_NAMES
    browser.screenshot("predict-sample")


def test_dashboard_docs_render_offline(browser):
    browser.open("/docs")
    browser.wait(".opblock", timeout=30)
    summaries = {e.text for e in browser.find_all(".opblock-summary-path")}
    assert {"/train", "/jobs/{job_id}", "/models/{model_id}/checkpoint", "/predict"} <= summaries
    browser.screenshot("docs")
    browser.open("/redoc")
    browser.wait("[data-section-id]", timeout=30)
    assert "Queue a training job" in browser.find("body").text
    browser.screenshot("redoc")


def test_dashboard_fits_a_phone(browser, trained):
    # a phone's viewport (headless Chromium's windows are at least 500 px wide)
    browser.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    for path, ready in (("/", "#train-form"), (f"/#/models/{trained}", ".bn-layer figure.chart"),
                        ("/#/predict", "#predict-random"), ("/#/datasets", "#dataset-form"),
                        ("/#/sweeps", "#sweep-form")):
        browser.open(path)
        browser.wait(ready)
        overflow = browser.driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at phone width"
        browser.screenshot("phone-" + (path.strip("/#").split("/")[0] or "jobs"), full_page=False)


def test_dashboard_is_keyboard_reachable(browser):
    browser.open("/")
    browser.wait("#train-form")
    body = browser.find("body")
    reached = set()
    for _ in range(40):
        body.send_keys("\ue004")  # Tab
        active = browser.driver.switch_to.active_element
        reached.add(active.get_attribute("id") or active.text)
    assert {"train-epochs", "train-submit", "status-filter"} <= reached
    assert {"Jobs", "Models", "Predict", "API docs"} <= reached
