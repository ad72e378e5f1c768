"""`refam serve` in a real browser: headless Chromium (Debian's chromium + chromium-driver, which
`make install` installs) uploads a scene, types expressions, clicks Segment, waits for the mask and
checks what the page shows against the API. REFAM_SERVE_SCREENSHOT=docs/serve.png also saves the
page as the README shows it."""

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
REFAM = str(Path(sys.executable).parent / "refam")
SCENE = ROOT / "assets/shapes-demo/images/demo-00005.png"
CAPTION = "a big red triangle, a big black square, a big purple circle and a big green circle"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`refam serve` on a free loopback port, stopped at the end."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "TQDM_DISABLE": "1", "NO_PROXY": "127.0.0.1,localhost"}
    with log.open("w") as out:
        process = subprocess.Popen([REFAM, "serve", "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 240
        while f"refam serve: {url}" not in log.read_text():
            assert process.poll() is None, f"refam serve exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"refam serve did not start: {log.read_text()[-2000:]}"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("the browser test needs Debian's chromium and chromium-driver (`make install` installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
                 "--window-size=1400,1500"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def expected():
    from refam import RefAM

    return RefAM.load().segment(SCENE, ["the black square", "the purple circle"], caption=CAPTION)


def fetch(url: str) -> bytes:
    assert url.startswith("http://127.0.0.1:")  # loopback only
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_page_segments_an_upload_shows_the_apis_mask_and_survives_bad_input(server, browser, expected):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 120)

    def one(selector):
        return browser.find_element(By.CSS_SELECTOR, selector)

    def status() -> str:
        return one("#refam-status").text.strip()

    def segment_and_wait():
        summary = one("#refam-summary").text
        one("#refam-run").click()
        wait.until(lambda d: one("#refam-summary").text not in ("", summary) or status())

    browser.get(server)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#refam-input input[type=file]"))
    one("#refam-input input[type=file]").send_keys(str(SCENE))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#refam-preview img"))
    one("#refam-expressions textarea").send_keys("the black square\nthe purple circle")
    one("#refam-caption textarea").send_keys(CAPTION)
    segment_and_wait()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#refam-pictures img")) == 4)
    assert status() == ""

    # what the page shows is what the API computes: points, kept tokens, and the mask file it links
    summary = one("#refam-summary").text
    for prediction in expected:
        x, y = prediction.point
        assert f"({x:g}, {y:g})" in summary
    links = wait.until(lambda d: [a.get_attribute("href") for a in d.find_elements(By.CSS_SELECTOR, "#refam-downloads a")
                                  if a.get_attribute("href")])
    masks = [link for link in links if link.endswith("_mask.png")]
    assert len(masks) == 2 and any(link.endswith("run.json") for link in links)
    # gradio serves each file from a folder named by its hash: pair links by the file name's index
    by_index = sorted(masks, key=lambda link: int(link.rsplit("/", 1)[-1].split("-", 1)[0]))
    for link, prediction in zip(by_index, expected):
        shown = np.asarray(Image.open(io.BytesIO(fetch(link)))) == 255
        assert np.array_equal(shown, prediction.mask)
    # the pictures the page loaded: masks outlined over the image enlarged to 512 px, heatmaps with a colour bar
    sizes = browser.execute_script(
        "return [...document.querySelectorAll('#refam-pictures img')].map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes[0] == [512, 512] and sizes[1][1] == 512 and sizes[1][0] > 512
    if os.environ.get("REFAM_SERVE_SCREENSHOT"):
        time.sleep(1)
        browser.save_screenshot(os.environ["REFAM_SERVE_SCREENSHOT"])

    # a toggle reruns on the loaded model: magnets off, the magnet tokens leave the dropped list
    assert "pink" in summary
    one("#refam-magnets input[type=checkbox]").click()
    wait.until(lambda d: "pink" not in one("#refam-summary").text and one("#refam-summary").text)
    one("#refam-magnets input[type=checkbox]").click()
    wait.until(lambda d: "pink" in one("#refam-summary").text)

    # an empty expression: the CLI's one line in the page, then the next request still works
    box = one("#refam-expressions textarea")
    box.clear()
    box.send_keys("   ")
    one("#refam-run").click()
    wait.until(lambda d: status())
    assert status() == "refam: error: an expression is empty: give the words that name the object"
    assert not browser.find_elements(By.CSS_SELECTOR, "#refam-pictures img")
    box.clear()
    box.send_keys("the black square")
    segment_and_wait()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#refam-pictures img")) == 2)
    assert status() == ""
    x, y = expected[0].point
    assert f"({x:g}, {y:g})" in one("#refam-summary").text
