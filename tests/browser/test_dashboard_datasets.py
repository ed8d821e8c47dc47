"""The datasets page in headless Chromium against the real stack: upload, report, samples, training on it."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.bnlenet.datasets.builders import png, write, zip_bytes
from tests.integration.conftest import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CLASSES = ("digit-0", "digit-1", "digit-2")  # scikit-learn's handwritten digits 0, 1 and 2 (folder names sort in label order)
PER_CLASS = 15


def digits_zip(path: Path, classes: tuple[str, ...] = CLASSES, per_class: int = PER_CLASS) -> Path:
    """A zip of class folders (``<class>/<n>.png``) of real 8x8 handwritten digits, the service to split them."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    members = {}
    for label, name in enumerate(classes):
        for n, image in enumerate(digits.images[digits.target == label][:per_class]):
            pixels = Image.fromarray((np.asarray(image) * (255 / 16)).round().astype(np.uint8))
            members[f"{name}/{n:03d}.png"] = png(np.asarray(pixels.resize((28, 28), Image.Resampling.NEAREST)))
    return write(path, zip_bytes(members))


def upload(browser, path: Path, name: str | None = None) -> None:
    browser.open("/#/datasets")
    browser.wait("#dataset-form")
    browser.find("#dataset-file").send_keys(str(path))
    if name:
        browser.find("#dataset-name").send_keys(name)
    browser.find("#dataset-submit").click()


def shown_pixels(browser, css: str) -> np.ndarray:
    """The gray values of the image the page shows (drawn to a canvas and read back)."""
    width, height, data = browser.driver.execute_script("""
        const img = document.querySelector(arguments[0]);
        const canvas = document.createElement("canvas");
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        const ctx = canvas.getContext("2d");
        ctx.drawImage(img, 0, 0);
        const d = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
        const gray = [];
        for (let i = 0; i < d.length; i += 4) gray.push(d[i]);
        return [canvas.width, canvas.height, gray];""", css)
    return np.asarray(data, dtype=np.uint8).reshape(height, width)


def test_dashboard_uploads_a_dataset_and_shows_its_report_and_samples(browser, stack, tmp_path):
    upload(browser, digits_zip(tmp_path / "digits.zip"), name="digits-browser")
    stored = browser.wait("#dataset-stored")
    dataset = stack.client.get(f"/datasets/{stored.text}").json()
    assert dataset["aliases"] == ["digits-browser"] and dataset["classes"] == list(CLASSES)
    progress = browser.find("#dataset-progress")
    assert progress.get_attribute("data-state") == "done" and float(progress.get_attribute("value")) == 1
    assert browser.driver.current_url.endswith(f"#/datasets/{dataset['id']}")

    # the report: images per class and split, as the API counted them, every class's images in one split or the other
    counts = dataset["report"]["counts"]
    table = browser.wait("#dataset-counts")
    for name in CLASSES:
        cells = {s: table.find_element(By.CSS_SELECTOR, f'td[data-split="{s}"][data-class="{name}"]').text
                 for s in ("train", "test")}
        assert cells == {s: str(counts[s][name]) for s in ("train", "test")}
        assert int(cells["train"]) + int(cells["test"]) == PER_CLASS
    assert table.find_element(By.CSS_SELECTOR, 'td[data-split="train"][data-total]').text == str(dataset["train_size"])
    assert table.find_element(By.CSS_SELECTOR, 'td[data-split="test"][data-total]').text == str(dataset["test_size"])
    assert dataset["train_size"] + dataset["test_size"] == len(CLASSES) * PER_CLASS
    assert browser.find('[data-report="Image sizes"]').text == "28x28: 45"
    assert browser.find('[data-report="Skipped files"]').text == "none"
    row = browser.wait(f'tr[data-dataset-id="{dataset["id"]}"]')
    assert "digits-browser" in row.text

    # the sample grid: the API's samples.png (a row of 8 per class), with the class names beside its rows
    image = browser.wait("#dataset-samples", check=lambda e: e.get_attribute("naturalWidth") not in (None, "0"))
    grid = np.asarray(Image.open(io.BytesIO(
        stack.client.get(f"/datasets/{dataset['id']}/samples.png", params={"per_class": 8}).content)).convert("L"))
    assert grid.shape == (28 * len(CLASSES), 28 * 8)
    assert (shown_pixels(browser, "#dataset-samples") == grid).all()
    assert image.get_attribute("alt").endswith(", ".join(CLASSES))
    labels = browser.find_all("figure.sample-grid ol li")
    assert [label.text for label in labels] == list(CLASSES)
    browser.screenshot("datasets-report")


def test_dashboard_shows_every_problem_of_a_refused_upload(browser, stack, tmp_path):
    browser.expect_error("/datasets - Failed to load resource: the server responded with a status of 422")
    before = stack.client.get("/datasets").json()["count"]
    path = digits_zip(tmp_path / "one-class.zip", classes=("digit-0",), per_class=3)
    refused = stack.client.post("/datasets", files={"file": ("one-class.zip", path.read_bytes())})
    assert refused.status_code == 422
    upload(browser, path)
    box = browser.wait("#dataset-upload-error", check=lambda e: e.is_displayed())
    assert refused.json()["detail"] in box.text
    problems = [li.text for li in browser.find_all("#dataset-problems li")]
    assert problems == refused.json()["problems"] and len(problems) >= 2  # one class, too few images
    assert browser.find("#dataset-progress").get_attribute("data-state") == "refused"
    assert stack.client.get("/datasets").json()["count"] == before  # nothing stored
    browser.screenshot("datasets-refused")


def test_dashboard_trains_on_a_chosen_dataset_and_refuses_to_delete_it(browser, stack, tmp_path):
    path = digits_zip(tmp_path / "digits.zip")
    created = stack.client.post("/datasets", files={"file": ("digits.zip", path.read_bytes())}, data={"name": "digits-job"})
    assert created.status_code in (200, 201), created.text
    dataset = created.json()

    # the job form offers the registered datasets, Fashion-MNIST first selected
    browser.open("/")
    choice = browser.wait("#train-dataset", check=lambda e: len(e.find_elements(By.CSS_SELECTOR, "option")) >= 2)
    assert Select(choice).first_selected_option.get_attribute("value") == "fashion-mnist"
    option = choice.find_element(By.CSS_SELECTOR, f'option[data-dataset-id="{dataset["id"]}"]')
    assert option.get_attribute("value") in dataset["aliases"]  # chosen by name, resolved to the id by the API
    Select(choice).select_by_value(option.get_attribute("value"))
    for field, value in (("epochs", "1"), ("batch_size", "8")):
        box = browser.find(f"#train-{field}")
        box.clear()
        box.send_keys(value)
    browser.find("#train-submit").click()
    browser.wait("#train-follow")
    job_id = stack.client.get("/jobs", params={"limit": 1}).json()["data"][0]["job_id"]
    job = stack.wait_job(job_id, {"succeeded", "failed", "cancelled"})
    assert job["status"] == "succeeded" and job["params"]["dataset"] == dataset["id"], job

    # the predict page names the model's own classes
    browser.open(f"/#/predict?model={job_id}")
    assert browser.wait("#predict-class-names").text == ", ".join(CLASSES)
    image = tmp_path / "digit.png"
    with zipfile.ZipFile(path) as archive:
        image.write_bytes(archive.read("digit-2/000.png"))
    browser.find("#predict-file").send_keys(str(image))
    browser.wait("#predict-class", check=lambda e: e.text in CLASSES)
    assert [li.get_attribute("data-class") for li in browser.find_all("#predict-probs li")] == list(CLASSES)
    browser.screenshot("predict-dataset-classes")

    # deleting it is refused while a model uses it, and the page says why
    browser.expect_error("Failed to load resource: the server responded with a status of 409")
    refusal = stack.client.delete(f"/datasets/{dataset['id']}")
    assert refusal.status_code == 409
    browser.open("/#/datasets")
    button = browser.wait(f'button[data-delete="{dataset["id"]}"]')
    button.click()
    assert button.text == "Really delete?"
    button.click()
    error = browser.wait("#datasets-error", check=lambda e: e.is_displayed())
    assert refusal.json()["detail"] in error.text and job_id in error.text
    wait_for(lambda: stack.client.get(f"/datasets/{dataset['id']}").status_code == 200, 5, "the dataset went")
    browser.screenshot("datasets-delete-refused")
