"""Open a report the way people see it, in headless Chromium, and fail on any console error, broken
or missing plot. `evo check-report PAGE.html [--screenshot FILE.png]`; the tests call `check_page`.

Needs Debian's `chromium` and `chromium-driver` (installed by `scripts/install.sh --dev`).
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

BROWSERS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
DRIVERS = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


@dataclasses.dataclass
class PageCheck:
    """What the browser saw: console errors, plots drawn, plots broken, and the screenshot."""

    console_errors: list[str]
    plots: int
    broken: list[str]
    screenshot: Path | None

    @property
    def ok(self) -> bool:
        return not self.console_errors and not self.broken and self.plots > 0


def check_page(page: Path, screenshot: Path | None = None, min_plots: int = 1, timeout_s: float = 60) -> PageCheck:
    """Load `page` in headless Chromium; raise RuntimeError when no browser is installed."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = next((b for b in BROWSERS if Path(b).exists()), None)
    driver_path = next((d for d in DRIVERS if Path(d).exists()), shutil.which("chromedriver"))
    if browser is None or driver_path is None:
        raise RuntimeError("headless check needs Debian's chromium and chromium-driver: apt-get install chromium "
                           "chromium-driver (scripts/install.sh --dev does)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,2000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.set_page_load_timeout(timeout_s)
        driver.get(page.resolve().as_uri())
        deadline = time.monotonic() + timeout_s
        while driver.execute_script("return document.readyState") != "complete" and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # console messages reach the log asynchronously
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        images = driver.execute_script(
            "return Array.from(document.querySelectorAll('img.plot')).map("
            "i => [i.alt, i.complete && i.naturalWidth > 0 && i.naturalHeight > 0])")
        if screenshot is not None:
            driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
    broken = [alt for alt, drawn in images if not drawn]
    if len(images) < min_plots:
        broken.append(f"{min_plots - len(images)} plot(s) missing (found {len(images)}, want {min_plots})")
    return PageCheck(errors, len(images) - len([b for b in broken if "missing" not in b]), broken, screenshot)
