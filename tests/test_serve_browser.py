"""`refam serve` in a real browser: headless Chromium (Debian's chromium + chromium-driver, which
`make install` installs) uploads a scene, types expressions, clicks Segment, waits for the mask and
checks what the page shows against the API. REFAM_SERVE_SCREENSHOT=docs/serve.png also saves the
page as the README shows it."""

import contextlib
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


@contextlib.contextmanager
def serving(folder: Path, *args: str):
    """`refam serve ARGS` on a free loopback port (its log in `folder`), stopped at the end."""
    port = free_port()
    log = folder / "serve.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "TQDM_DISABLE": "1", "NO_PROXY": "127.0.0.1,localhost"}
    with log.open("w") as out:
        process = subprocess.Popen([REFAM, "serve", "--host", "127.0.0.1", "--port", str(port), *args], cwd=ROOT,
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
def server(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("serve")) as url:
        yield url


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


CLIP_FRAMES = sorted((ROOT / "assets/shapes-video-demo/valid/JPEGImages/motion-demo-0000").glob("*.jpg"))[:5]


def video_state(browser, selector: str) -> dict | None:
    """The <video> under `selector` as the browser has it: ready state, duration, position, error."""
    return browser.execute_script(
        "const v = document.querySelector(arguments[0]);"
        "return v && {ready: v.readyState, duration: v.duration, time: v.currentTime, error: v.error && v.error.code,"
        "             width: v.videoWidth, visible: v.offsetParent !== null};", selector)


def assert_plays(browser, selector: str, seconds: float) -> None:
    """The video is decoded (its frames and duration known, no error), and it plays: its position moves."""
    from selenium.webdriver.support.ui import WebDriverWait

    state = WebDriverWait(browser, 60).until(
        lambda d: (s := video_state(d, selector)) and (s["ready"] >= 2 or s["error"]) and s)
    assert state["error"] is None and state["visible"] and state["width"] > 0, state
    assert state["duration"] == pytest.approx(seconds, abs=0.25), state
    positions = {video_state(browser, selector)["time"]}
    for _ in range(8):  # looping: the position moves on (and wraps), never stuck
        time.sleep(0.15)
        positions.add(video_state(browser, selector)["time"])
    assert len(positions) > 2, positions


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_video_plays_an_animated_gif_runs_as_one_and_its_masks_play_with_the_key_frames_maps(server, browser, tmp_path):
    import cv2
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 180)
    frames = [Image.open(p).convert("RGB") for p in CLIP_FRAMES]
    mp4 = str(tmp_path / "clip.mp4")  # MPEG-4 Part 2: a browser does not play this file itself
    writer = cv2.VideoWriter(mp4, cv2.VideoWriter_fourcc(*"mp4v"), 5, frames[0].size)
    for frame in frames:
        writer.write(np.asarray(frame)[:, :, ::-1].copy())
    writer.release()
    gif, still = tmp_path / "moving.gif", tmp_path / "still.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=200, loop=0)
    frames[0].save(still)

    def one(selector):
        return browser.find_element(By.CSS_SELECTOR, selector)

    def upload(path):
        """A fresh page; a click in it first, as a user's to upload (a browser autoplays after one)."""
        browser.get(server)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#refam-expressions textarea")
                   and d.find_elements(By.CSS_SELECTOR, "#refam-input input[type=file]"))
        one("#refam-expressions textarea").click()
        one("#refam-input input[type=file]").send_keys(str(path))

    upload(mp4)
    assert_plays(browser, "#refam-preview-video video", seconds=1.0)  # 5 frames at 5 fps, played
    wait.until(lambda d: one("#refam-status").text.strip() == "video: clip.mp4, 5 frames at 5 fps")

    upload(gif)  # an animated GIF: a video too, not a still
    assert_plays(browser, "#refam-preview-video video", seconds=1.0)
    assert not browser.find_elements(By.CSS_SELECTOR, "#refam-preview img")
    one("#refam-expressions textarea").send_keys("the black square\nthe orange circle")
    one("#refam-run").click()
    wait.until(lambda d: one("#refam-summary").text or one("#refam-status").text.startswith("refam: error"))
    assert one("#refam-status").text.strip() == "" and "5 frame(s)" in one("#refam-summary").text
    assert_plays(browser, "#refam-clip video", seconds=1.0)  # the tracked masks, every frame
    # the key frame's maps, saying which frame: mask and heatmap per expression, and the token maps
    captions = browser.execute_script("return [...document.querySelectorAll('#refam-pictures img')].map(i => i.alt)")
    assert len(captions) == 4 and all("(key frame 0)" in c for c in captions), captions
    assert browser.find_elements(By.CSS_SELECTOR, "#refam-token-maps img")

    upload(still)  # a still GIF stays an image
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#refam-preview img"))
    assert not video_state(browser, "#refam-preview-video video") and one("#refam-status").text.strip() == ""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_downloaded_from_the_page_and_given_as_config_comes_back_whole(server, browser, tmp_path):
    import json

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 180)

    def one(selector):
        return browser.find_element(By.CSS_SELECTOR, selector)

    browser.get(server)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#refam-input input[type=file]"))
    one("#refam-input input[type=file]").send_keys(str(SCENE))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#refam-preview img"))
    one("#refam-expressions textarea").send_keys("the black square\nthe purple circle")
    one("#refam-caption textarea").send_keys(CAPTION)
    one("#refam-magnets input[type=checkbox]").click()  # a setting, restored by the model section
    one("#refam-run").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#refam-pictures img")) == 4)
    links = wait.until(lambda d: [a.get_attribute("href") for a in d.find_elements(By.CSS_SELECTOR, "#refam-downloads a")
                                  if a.get_attribute("href")])
    for name in ("run.json", SCENE.name):  # saved side by side, as a browser's downloads are
        (tmp_path / name).write_bytes(fetch(next(link for link in links if link.endswith("/" + name))))
    record = json.loads((tmp_path / "run.json").read_text())

    with serving(tmp_path, "--config", str(tmp_path / "run.json")) as restored:
        browser.get(restored)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#refam-preview img"))  # the input, previewed
        assert SCENE.name in one("#refam-input").text.replace("\n", "")  # (the name is shown in two parts)
        assert one("#refam-expressions textarea").get_attribute("value") == "the black square\nthe purple circle"
        assert one("#refam-caption textarea").get_attribute("value") == CAPTION
        assert not one("#refam-magnets input[type=checkbox]").is_selected()
        one("#refam-run").click()  # as it was: the same points
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#refam-pictures img")) == 4)
        summary = one("#refam-summary").text
        for entry in record["run"]["expressions"]:
            x, y = entry["point"]
            assert f"({x:g}, {y:g})" in summary
