"""The status page in a real headless browser (Debian's chromium and chromedriver,
driven by selenium): it shows a running daemon's drives and LUN, and a snapshot
created with vsanctl appears without a reload (server-sent events)."""

from __future__ import annotations

import os
import shutil

import pytest
from daemonkit import Daemon, free_port, healthy
from test_vsanctl import ctl

DRIVES = 6
WAIT = 15          # seconds: a deadline, not a pause


@pytest.fixture
def browser(tmp_path_factory):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium and chromedriver are not installed (make test installs "
                    "Debian's chromium and chromium-driver as root)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1200,900"):
        opts.add_argument(a)
    # chromium's profile and its singleton socket directory (TMPDIR) under pytest's
    # temporary directory: left in /tmp they would pile up, one per run
    home = tmp_path_factory.mktemp("chromium")
    opts.add_argument(f"--user-data-dir={home / 'profile'}")
    env = dict(os.environ, TMPDIR=str(home))
    # the driver is given: selenium must not look for (or download) one
    b = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver, env=env))
    yield b
    b.quit()


def test_page_shows_the_pool_and_a_new_snapshot_live(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    d = Daemon(tmp_path / "state", drives=DRIVES, drive_size="256M",
               extra=["--metrics", f"127.0.0.1:{port}"]).start()
    try:
        ctl(d, "lun", "create", "web-vol", "--size", "32M", "--thick")
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, WAIT)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, '.node[data-name="web-vol"]'))
        bars = browser.find_elements(By.CSS_SELECTOR, "#drives .drive canvas")
        assert len(bars) == DRIVES
        drives = browser.find_elements(By.CSS_SELECTOR, "#drives .drive")
        assert [x.get_attribute("data-status") for x in drives] == ["ok"] * DRIVES
        # the thick LUN's PSEGs are drawn: some bar has a used (blue) pixel
        painted = browser.execute_script("""
            const used = getComputedStyle(document.documentElement).getPropertyValue('--used').trim();
            const [r, g, b] = [1, 3, 5].map((i) => parseInt(used.slice(i, i + 2), 16));
            return [...document.querySelectorAll('#drives canvas')].some((c) => {
              const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
              for (let i = 0; i < px.length; i += 4)
                if (px[i] === r && px[i + 1] === g && px[i + 2] === b) return true;
              return false;
            });""")
        assert painted
        assert "web-vol" in browser.find_element(By.ID, "trees").text
        assert "no task running" in browser.find_element(By.ID, "tasks").text

        ctl(d, "snapshot", "create", "web-vol", "web-snap")
        snap = wait.until(lambda b: b.find_elements(
            By.CSS_SELECTOR, '.node[data-name="web-vol"] .node[data-name="web-snap"]'))
        assert "snapshot" in snap[0].text
        # the event stream works (a page that only polls says "polling")
        wait.until(lambda b: b.find_element(By.ID, "link").text == "live")
        healthy(d)
    finally:
        d.stop()
