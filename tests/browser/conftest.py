"""Browser fixtures: the real stack (Redis, a Celery worker, uvicorn) and headless Chromium via Selenium.

Chromium and chromedriver are the system's (Debian's ``chromium`` and ``chromium-driver``;
``scripts/test.sh`` installs them when it runs as root). Without them these tests skip, and fail under ``CI=true``.
Screenshots go to ``var/screenshots/`` (``SCREENSHOT_DIR`` moves them).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ROOT, Stack, running_stack, wait_for

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = Path(os.environ.get("SCREENSHOT_DIR", ROOT / "var" / "screenshots"))

MISSING = None if CHROMIUM and CHROMEDRIVER else (
    "headless browser tests need chromium and chromedriver (apt-get install chromium chromium-driver; "
    "scripts/test.sh installs them when run as root)")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
except ImportError:  # pragma: no cover
    MISSING = MISSING or "selenium is not installed (pip install -e '.[dev]')"


@pytest.fixture(scope="session", autouse=True)
def browser_parts() -> None:
    """Each browser test skips (and under CI=true fails: tests/ci_skips.py) without Chromium or Selenium."""
    if MISSING:
        pytest.skip(MISSING)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("browser-stack"), synthetic_data_dir) as s:
        yield s


def new_driver(width: int = 1280, height: int = 900) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--lang=en-GB", "--no-first-run",
                "--disable-background-networking", "--disable-component-update"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


class Browser:
    """A Chromium session pointed at the stack, collecting console errors and screenshots."""

    def __init__(self, driver: Any, base_url: str) -> None:
        self.driver, self.base_url = driver, base_url
        self.console: list[dict[str, Any]] = []
        self.expected: list[str] = []  # console errors a test provokes on purpose (a 422 it asked for)

    def expect_error(self, text: str) -> None:
        self.expected.append(text)

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait(self, css: str, timeout: float = 20, check=None) -> Any:  # type: ignore[no-untyped-def]
        """The first element matching ``css`` (and ``check(element)``), waiting up to ``timeout`` s."""
        found: list[Any] = []

        def ready() -> bool:
            for element in self.find_all(css):
                try:
                    if check is None or check(element):
                        found.append(element)
                        return True
                except Exception:  # stale while the page re-renders: look again
                    continue
            return False

        wait_for(ready, timeout, lambda: f"{css} never appeared{' as expected' if check else ''}; "
                 f"console: {self.read_console()}", interval=0.1)
        return found[0]

    def read_console(self) -> list[dict[str, Any]]:
        self.console.extend(self.driver.get_log("browser"))
        return self.console

    def errors(self) -> list[dict[str, Any]]:
        return [entry for entry in self.read_console()
                if entry["level"] == "SEVERE" and not any(text in entry["message"] for text in self.expected)]

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        """Save the page (all of it, up to 3000 px tall, unless ``full_page`` is false) and print where."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        size = self.driver.get_window_size()
        if full_page:
            height = self.driver.execute_script("return document.documentElement.scrollHeight")
            self.driver.set_window_size(size["width"], min(max(height + 140, size["height"]), 3000))
        self.driver.save_screenshot(str(path))
        if full_page:
            self.driver.set_window_size(size["width"], size["height"])
        print(f"screenshot: {path}")
        return path


@pytest.fixture
def browser(stack: Stack) -> Iterator[Browser]:
    """A fresh browser per test; the test fails if the page logged any console error."""
    driver = new_driver()
    b = Browser(driver, stack.url)
    try:
        yield b
        errors = b.errors()
        assert not errors, f"console errors: {errors}"
    finally:
        driver.quit()
