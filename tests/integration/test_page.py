"""The live page in headless Chromium (Debian's chromium + chromedriver): it loads, shows a running stream,
and shows a tag that arrived after the page loaded. Saves a screenshot."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.integration.conftest import API_KEY
from bench import wait_for
from bench.sources import UdpSender

pytestmark = pytest.mark.slow


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("chromium and chromedriver are needed (ops/setup.sh installs them with apt-get)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,700"):
        opts.add_argument(arg)
    b = webdriver.Chrome(service=DriverService(executable_path=driver), options=opts)
    yield b
    b.quit()


def test_the_page_shows_a_running_stream_and_a_tag_that_arrives_after_loading(service, browser, tmp_path):
    from selenium.webdriver.common.by import By

    video = sorted((__import__("pathlib").Path(service.settings.model_dir) / "data" / "heldout").glob("shapes_*.mp4"))[3]
    with UdpSender(video, loop=True, reencode=True) as udp:
        assert service.post("/v1/streams", json={"url": udp.url, "stream_id": "page-live"}).status_code == 202
        # given the page loaded while the stream runs
        browser.get(service.url(f"/?key={API_KEY}"))
        assert "Live VideoBERT tags" in browser.page_source
        row = 'tr[data-stream-id="page-live"]'
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'{row}[data-status="running"]'), 60,
                 "the stream shown as running")
        loaded = time.time()
        first = browser.find_element(By.CSS_SELECTOR, f"{row} td.tag").get_attribute("data-t0")
        # then a tag that arrived after the page loaded is shown
        newer = wait_for(lambda: (t := browser.find_element(By.CSS_SELECTOR, f"{row} td.tag").get_attribute("data-t0"))
                         and (first is None or float(t) > float(first)) and t, 60, "a new tag on the page")
        text = browser.find_element(By.CSS_SELECTOR, f"{row} td.tag b").text
        assert len(text.split()) == 2, text  # verb and noun
        tags = service.get(f"/v1/streams/page-live/tags?since={float(newer) - 0.001}&limit=1").json()["tags"]
        assert tags and tags[0]["t0"] == float(newer)
        assert time.time() - loaded < 60
        shot = tmp_path / "live_page.png"
        browser.save_screenshot(str(shot))
        if os.environ.get("VBS_SCREENSHOT"):
            shutil.copy(shot, os.environ["VBS_SCREENSHOT"])
        assert shot.stat().st_size > 10_000
        service.delete("/v1/streams/page-live")
