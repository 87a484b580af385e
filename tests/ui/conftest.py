"""A live keyed server with the credit explorer on, and a real headless Chromium driving it.

Chromium and chromedriver are Debian's (``scripts/test.sh`` installs them); Selenium is told
both paths, so Selenium Manager never downloads a browser or a driver. Chromium resolves no host
but 127.0.0.1, and its performance log records every request the page makes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from server.settings import DEFAULT_MODEL_DIR

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
API_KEY = "ui-test-key"


@pytest.fixture(scope="session")
def ui_server(make_server):
    """The embedded model on the hf backend, TC_UI=true, behind one API key."""
    env = {"TC_MODEL": str(DEFAULT_MODEL_DIR), "TC_UI": "true", "TC_API_KEYS": API_KEY}
    proc = make_server("server-ui", **env).start()
    yield proc
    proc.stop()


def launch_chromium(profile: str, width: int = 1500, height: int = 1100) -> webdriver.Chrome:
    """Debian's headless Chromium with a fresh profile, through Debian's chromedriver."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--force-device-scale-factor=1",
        f"--window-size={width},{height}",
        # Offline by construction: any other host fails to resolve (and is still logged).
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="session")
def chromium():
    """One headless Chromium for the session's UI tests."""
    profile = tempfile.mkdtemp(prefix="tc-ui-chromium-")
    driver = launch_chromium(profile)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def page_url(server, key: str | None = API_KEY) -> str:
    """The page's URL with the key as the Basic password (what a browser's login prompt sends)."""
    host = urlsplit(server.url).netloc
    return f"http://explorer:{key}@{host}/ui" if key else f"http://{host}/ui"


def requested_urls(driver) -> list[str]:
    """Every URL the browser asked for since the last call (Network.requestWillBeSent)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def open_page(driver, server, key: str | None = API_KEY) -> None:
    """Load /ui, give the page its key (the key field), and wait for the method list."""
    driver.get(page_url(server, key))
    if key:
        field = driver.find_element("id", "api-key")
        field.clear()
        field.send_keys(key)
        driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", field)
    wait(driver, 30).until(
        lambda d: "model " in d.find_element("id", "status").text,
        message="the page never showed the model (GET /v1/model)",
    )


def wait(driver, seconds: float) -> WebDriverWait:
    return WebDriverWait(driver, seconds, poll_frequency=0.1)


@pytest.fixture(scope="session")
def ui():
    """The helpers above, for the test modules (a conftest is not importable by name)."""
    return SimpleNamespace(
        api_key=API_KEY,
        open_page=open_page,
        requested_urls=requested_urls,
        wait=wait,
        page_url=page_url,
    )
