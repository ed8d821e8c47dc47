"""Uploaded data sets trained end to end: real images uploaded to the API, a real worker trains on them, and the
model answers /predict with the data set's class names."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from tests.bnlenet.datasets.builders import zeros_bomb
from tests.dataset_uploads import DIGIT_NAMES, digits, digits_zip, fashion_mnist_subset, folder_zip, png
from tests.integration.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

THREE = (0, 1, 7)  # T-shirt/top, Trouser, Sneaker


def _train(stack: Stack, **params: object) -> dict:
    r = stack.client.post("/train", json={"epochs": 2, "batch_size": 64, "lr": 0.9, **params})
    assert r.status_code == 202, r.text
    job = stack.wait_job(r.json()["job_id"], {"succeeded", "failed"}, timeout=240)
    assert job["status"] == "succeeded", job
    return job


def test_a_three_class_subset_trains_and_answers_with_its_class_names(stack):
    arrays, names = fashion_mnist_subset(THREE, train=900, test=150)
    ds = stack.upload_dataset(folder_zip(arrays, names), "three.zip", name="three")
    assert ds["num_classes"] == 3
    job = _train(stack, dataset="three", epochs=6, batch_size=32)
    assert job["params"]["dataset"] == ds["id"]
    model = stack.client.get(f"/models/{job['job_id']}").json()
    assert model["dataset"] == ds["id"] and model["classes"] == ds["classes"]
    assert model["hyperparameters"]["dataset"] == ds["id"]
    assert model["final_test_acc"] > 0.8, model  # three easy classes; chance is a third
    sneaker = arrays["test_images"][arrays["test_labels"] == names.index("Sneaker")][0]
    r = stack.client.post("/predict", params={"model_id": job["job_id"]},
                          files={"file": ("x.png", png(sneaker), "image/png")})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer["scores"]) == set(ds["classes"]) and len(answer["probabilities"]) == 3
    assert answer["class_name"] == "Sneaker"
    assert [t["class_name"] for t in answer["top_k"]][0] == "Sneaker" and len(answer["top_k"]) == 3


def test_scikit_learn_digits_train_well_above_chance_and_answer_digit_names(stack):
    ds = stack.upload_dataset(digits_zip(), "digits.zip", name="digits", test_fraction="0.2", seed="0")
    assert sorted(ds["classes"]) == sorted(DIGIT_NAMES)
    assert ds["train_size"] + ds["test_size"] == 1797 and ds["report"]["split"]["source"] == "service"
    job = _train(stack, dataset="digits", epochs=10, batch_size=32)
    assert job["final_test_acc"] > 0.8, job  # chance is 0.1
    images, labels = digits()
    batch = [("files", (f"{i}.png", png(images[i]), "image/png")) for i in range(0, 1797, 90)]
    r = stack.client.post("/predict/batch", params={"model_id": job["job_id"]}, files=batch)
    assert r.status_code == 200, r.text
    answers = [a["class_name"] for a in r.json()["data"]]
    truth = [DIGIT_NAMES[int(labels[i])] for i in range(0, 1797, 90)]
    assert set(answers) <= set(DIGIT_NAMES)
    assert np.mean([a == t for a, t in zip(answers, truth, strict=True)]) > 0.7, (answers, truth)


def test_the_api_answers_while_an_upload_is_validated_and_refuses_a_bomb(stack):
    # 24,000 real PNGs: about 2 s of decoding here, long enough that a probe stuck behind the validation
    # would wait a good part of it (1,797 digits took 0.16 s, and a fast CI machine finished before 5 probes).
    arrays, names = fashion_mnist_subset(train=20_000, test=4_000)
    data = folder_zip(arrays, names)
    outcome: dict[str, object] = {}

    def upload() -> None:
        started = time.monotonic()
        with httpx.Client(base_url=stack.url, timeout=120) as client:
            outcome["response"] = client.post("/datasets", files={"file": ("big.zip", data, "application/zip")},
                                              data={"name": "answers-while-validated"})
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=upload)
    thread.start()
    latencies = []
    while thread.is_alive():
        started = time.monotonic()
        assert stack.client.get("/healthz", timeout=30).status_code == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)
    thread.join()
    response, seconds = outcome["response"], outcome["seconds"]
    assert isinstance(response, httpx.Response) and response.status_code in (200, 201), response
    assert response.json()["train_size"] == 20_000
    assert isinstance(seconds, float) and seconds > 0.5, f"the upload took {seconds} s: too quick to show anything"
    # An event loop blocked by the validation would hold a probe for about the upload's whole time.
    assert len(latencies) >= 5 and max(latencies) < min(2.0, seconds / 3), (seconds, latencies)

    r = stack.client.post("/datasets", files={"file": ("bomb.zip", zeros_bomb("shirt/0001.png"), "application/zip")})
    assert r.status_code in (413, 422), r.text
    assert r.json()["problems"]
    assert stack.client.get("/healthz").status_code == 200
