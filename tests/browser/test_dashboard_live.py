"""The dashboard with an API token, and following a job by the API's server-sent events (GET /jobs/{id}/events)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bnlenet.local.redis_server import free_port
from tests.integration.conftest import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.integration]

TOKEN = "browser-test-token"

# Counts the page's fetches of the job's record, to show that a followed job is not polled.
COUNT_JOB_FETCHES = """
(() => {
  const realFetch = window.fetch.bind(window);
  window.__jobFetches = 0;
  window.fetch = async (input, init) => {
    if (/\\/jobs\\/[A-Za-z0-9_-]+$/.test(String(input))) window.__jobFetches++;
    return realFetch(input, init);
  };
})();
"""


@contextmanager
def _api(stack, **env: str) -> Iterator[str]:
    """A second API process on the same Redis, with ``env`` added."""
    port = free_port()
    proc = stack.start_api(port=port, **env)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def token_api(stack) -> Iterator[str]:
    """A second API process on the same Redis, with API_TOKEN set."""
    with _api(stack, API_TOKEN=TOKEN) as url:
        yield url


@pytest.fixture(scope="module")
def protected_api(stack) -> Iterator[str]:
    """A third, with API_TOKEN set and reads protected."""
    with _api(stack, API_TOKEN=TOKEN, PROTECT_READS="true") as url:
        yield url


def test_dashboard_asks_for_the_token_and_says_when_it_is_missing_or_wrong(browser, token_api, stack):
    browser.base_url = token_api
    browser.expect_error("/train - Failed to load resource: the server responded with a status of 401")
    browser.expect_error("/train - Failed to load resource: the server responded with a status of 403")
    browser.open("/")
    browser.wait("#train-form")
    browser.find("#train-epochs").clear()
    browser.find("#train-epochs").send_keys("1")
    browser.find("#train-submit").click()

    # no token: the page asks; declining says why nothing happened
    browser.wait("#token-dialog[open]")
    browser.screenshot("token-dialog", full_page=False)
    browser.find("#token-cancel").click()
    assert "needs the API token" in browser.wait("#train-error", check=lambda e: e.is_displayed()).text

    # a wrong token: refused, and said so
    browser.find("#train-submit").click()
    browser.wait("#token-dialog[open]")
    browser.find("#token-input").send_keys("wrong")
    browser.find("#token-save").click()
    browser.wait("#train-error", check=lambda e: "refused" in e.text)

    # the right one, set once through the header button, is sent from then on
    browser.find("#token-button").click()
    browser.wait("#token-dialog[open]")
    browser.find("#token-input").clear()
    browser.find("#token-input").send_keys(TOKEN)
    browser.find("#token-save").click()
    wait_for(lambda: browser.driver.execute_script("return sessionStorage.getItem('bnlenet.apiToken')") == TOKEN, 5,
             "the token was not stored")  # the dialog's close event comes as a task of its own
    browser.find("#train-submit").click()
    browser.wait("#train-follow")
    job_id = browser.find("#train-follow").get_attribute("href").rsplit("/", 1)[-1]
    assert stack.job(job_id)["params"]["epochs"] == 1
    stack.wait_job(job_id, {"succeeded", "failed", "cancelled"})


def test_dashboard_follows_a_job_by_its_event_stream_without_polling(browser, stack):
    browser.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": COUNT_JOB_FETCHES})
    # Batch 2: 256 steps an epoch, so the job is still running when the page has connected.
    job_id = stack.client.post("/train", json={"epochs": 3, "batch_size": 2, "lr": 0.5}).json()["job_id"]
    browser.open(f"/#/jobs/{job_id}")
    live = browser.wait("#job-live", check=lambda e: e.get_attribute("data-mode") == "stream")
    assert "server-sent events" in live.text or "ended" in live.text
    browser.wait("#chart-progress", check=lambda e: int(e.get_attribute("data-points")) >= 2, timeout=60)
    browser.wait("#job-final", timeout=90)
    assert int(browser.find("#chart-epochs").get_attribute("data-points")) == 3
    assert "succeeded" in browser.find("#job-status").text
    assert "Final test accuracy" in browser.find("#job-final").text
    # the record once at the start and once at the end: everything else came by events
    assert browser.driver.execute_script("return window.__jobFetches") <= 2


def test_dashboard_follows_a_job_by_its_stream_with_the_query_token_when_reads_are_protected(
        browser, protected_api, stack):
    browser.base_url = protected_api
    browser.expect_error("/events")  # the first try, without the token, is refused (401)
    job_id = stack.client.post("/train", json={"epochs": 2, "batch_size": 2, "lr": 0.5}).json()["job_id"]
    browser.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                                   {"source": f"sessionStorage.setItem('bnlenet.apiToken', '{TOKEN}');"})
    browser.open(f"/#/jobs/{job_id}")
    browser.wait("#job-live", check=lambda e: e.get_attribute("data-mode") == "stream", timeout=30)
    browser.wait("#job-final", timeout=90)
    assert int(browser.find("#chart-epochs").get_attribute("data-points")) == 2
    browser.screenshot("job-stream-protected", full_page=False)
