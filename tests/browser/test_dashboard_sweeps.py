"""The sweeps page in headless Chromium against the real stack: a small sweep followed live, compared, its best aliased."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By

from tests.integration.conftest import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.integration]

SWEEP = {"name": "browser-lr", "method": "grid",
         "parameters": {"lr": {"values": [0.003, 0.9]}, "seed": {"values": [0, 1]}},  # one learns, one barely
         "base": {"epochs": 2, "batch_size": 64}}


def points(element) -> int:
    return int(element.get_attribute("data-points"))


def test_dashboard_compares_a_sweeps_trials_and_aliases_the_best(browser, stack):
    created = stack.client.post("/sweeps", json=SWEEP)
    assert created.status_code == 202, created.text
    sweep_id = created.json()["id"]

    # followed live from while it runs to its end, without reloading the page
    browser.open(f"/#/sweeps/{sweep_id}")
    live = browser.wait("#sweep-live", check=lambda e: e.get_attribute("data-mode"))
    assert live.get_attribute("data-mode") == "polling", live.text
    browser.driver.execute_script("window.__sameDocument = true")
    browser.screenshot("sweep-running")
    wait_for(lambda: stack.client.get(f"/sweeps/{sweep_id}").json()["status"] in {"succeeded", "failed", "cancelled"},
             180, "the sweep never ended")
    sweep = stack.client.get(f"/sweeps/{sweep_id}").json()
    assert sweep["status"] == "succeeded", sweep
    browser.wait("#sweep-live", check=lambda e: e.get_attribute("data-mode") == "done", timeout=10)
    assert browser.driver.execute_script("return window.__sameDocument === true")

    # the trials table: each setting, the served model's accuracy (as the API has it), epochs, stopped early, status
    assert len(sweep["trials"]) == 4
    for trial in sweep["trials"]:
        row = browser.find(f'#sweep-trials tr[data-job-id="{trial["job_id"]}"]')
        cells = [td.text for td in row.find_elements(By.CSS_SELECTOR, "td")]
        assert cells[0] == trial["setting"] and cells[1] == str(trial["params"]["seed"])
        assert cells[3] == trial["status"] == "succeeded"
        assert cells[4] == f"{trial['epochs_run']}/2" and cells[5] == ("stopped early" if trial["stopped_early"] else "no")
        assert cells[6] == f"{100 * trial['final_test_acc']:.2f}%"
        acc = row.find_element(By.CSS_SELECTOR, "td[data-acc]").get_attribute("data-acc")
        assert float(acc) == trial["final_test_acc"]

    # every trial's per-epoch curve, one series each, two per setting in the setting's colour
    chart = browser.find("#chart-sweep-curves")
    assert chart.get_attribute("data-series") == "4" and points(chart) == 2
    legend = chart.find_elements(By.CSS_SELECTOR, ".u-legend .u-series")
    assert len(legend) == 1 + 4
    colours: dict[str, set[str]] = {}
    for entry in legend[1:]:
        setting = entry.text.split(" · ")[0]
        colours.setdefault(setting, set()).add(entry.find_element(By.CSS_SELECTOR, ".u-marker").value_of_css_property("border-color"))
    assert set(colours) == {"lr=0.003", "lr=0.9"} and all(len(c) == 1 for c in colours.values())
    assert colours["lr=0.003"] != colours["lr=0.9"]

    # per setting: the mean and spread across seeds, as the API computed them
    groups = browser.find_all("#sweep-spread g.setting")
    assert [g.get_attribute("data-setting") for g in groups] == [s["setting"] for s in sweep["settings"]]
    for group, setting in zip(groups, sweep["settings"], strict=True):
        assert float(group.get_attribute("data-mean")) == setting["mean"]
        assert float(group.get_attribute("data-std")) == setting["std"]
        assert float(group.get_attribute("data-min")) == setting["min"]
        assert float(group.get_attribute("data-max")) == setting["max"]
        assert len(group.find_elements(By.CSS_SELECTOR, "circle.trial")) == setting["trials"] == 2
        row = browser.find(f'#sweep-settings tr[data-setting="{setting["setting"]}"]')
        assert row.find_element(By.CSS_SELECTOR, '[data-stat="mean"]').text == f"{100 * setting['mean']:.2f}%"
    browser.screenshot("sweep-done")

    # one click points an alias at the best trial's model
    best = sweep["best"]
    accuracies = sorted(t["final_test_acc"] for t in sweep["trials"])
    assert best["final_test_acc"] == accuracies[-1] > accuracies[0]  # a best that another trial is not
    assert browser.find("#sweep-best-acc").text.startswith(f"{100 * best['final_test_acc']:.2f}%")
    alias = browser.find("#sweep-alias")
    alias.clear()
    alias.send_keys("sweep-best")
    browser.find("#sweep-best-alias").click()
    browser.wait("#sweep-alias-result", check=lambda e: "now points at" in e.text)
    assert stack.client.get("/models/sweep-best").json()["model_id"] == best["model_id"]
    assert stack.client.get("/models").json()["aliases"]["sweep-best"] == best["model_id"]
    browser.screenshot("sweep-best-aliased", full_page=False)

    assert not [e for e in browser.read_console() if "Error" in e["message"]], browser.read_console()

    # and the list of sweeps shows it with its best accuracy
    browser.open("/#/sweeps")
    row = browser.wait(f'#sweeps-table tr[data-sweep-id="{sweep_id}"]')
    assert row.get_attribute("data-status") == "succeeded" and "browser-lr" in row.text
    assert f"{100 * best['final_test_acc']:.2f}%" in row.text
