"""A real browser for the tests: Debian's headless Chromium driven through chromedriver (selenium).

``.ci/run`` installs ``chromium`` and ``chromium-driver`` when they are missing and sets ``HRNN_REQUIRE_BROWSER=1``,
so that there a missing browser fails the tests instead of skipping them. Also a command, for the README's
screenshot of a report page: ``python -m tests.browser screenshot PAGE.html OUT.png``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# headless, and quiet on a machine without network: no background connections, updates or sync
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def missing() -> str | None:
    """Why no browser can run here (None: it can)."""
    try:
        import selenium  # noqa: F401, PLC0415
    except ImportError:
        return "selenium is not installed (the project's test extra)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (Debian: apt-get install chromium chromium-driver)"
    return None


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator:
    """A headless Chromium (a selenium WebDriver) with its own empty profile, quit on exit."""
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="hrnn-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.set_page_load_timeout(60)
            yield driver
        finally:
            driver.quit()


def screenshot(page: Path, out: Path, width: int = 1280) -> None:
    """The whole page as a PNG (the window grown to the page's height)."""
    with chromium(width) as driver:
        driver.get(page.resolve().as_uri())
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(int(height), 16000))
        driver.save_screenshot(str(out))


if __name__ == "__main__":  # python -m tests.browser screenshot PAGE OUT
    if len(sys.argv) != 4 or sys.argv[1] != "screenshot":
        sys.exit("usage: python -m tests.browser screenshot PAGE.html OUT.png")
    screenshot(Path(sys.argv[2]), Path(sys.argv[3]))
