"""`refam serve` in a real browser: headless Chromium (Debian's chromium + chromium-driver, which
`make install` installs) uploads a scene, types expressions, clicks Segment and checks what the page
shows against the API: a card per expression with no inner scroll, a token's map over the image at a
click, the mask outlined so the object keeps its colour, every control rerunning with the shown
result's settings beside it, a pinned result compared side by side, and errors as one styled line
that leaves the last result; an expression naming nothing in the scene flagged as a caution; a click on a mask correcting it (undo taking it back); an uploaded video (an animated GIF too) playing with its masks' clip, and
a downloaded run given back as `--config`. REFAM_SERVE_SCREENSHOT=docs/serve.png also saves the page as the README
shows it."""

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
RED = (220, 30, 30)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


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
                 "--window-size=1400,1500", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def model():
    from refam import RefAM

    return RefAM.load()


class Page:
    """The app in the browser, as a user works it."""

    def __init__(self, driver, url: str, ready: str = "#refam-input input[type=file]") -> None:
        """`ready`: what shows once the page is loaded (the upload box; a restored run's preview)."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.by, self.wait = driver, By, WebDriverWait(driver, 120)
        driver.get(url)
        self.wait.until(lambda d: self.all(ready))

    def one(self, selector: str):
        return self.driver.find_element(self.by.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list:
        return self.driver.find_elements(self.by.CSS_SELECTOR, selector)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def status(self) -> str:
        return self.one("#refam-status").text.strip()

    def expressions(self) -> list[str]:
        return [e.text for e in self.all(".refam-card .refam-expression")]

    def settings(self) -> list[str]:
        """The settings panels' text (one; two when comparing)."""
        return [e.text for e in self.all(".refam-settings")]

    def upload(self, path: Path) -> None:
        if not self.all("#refam-input input[type=file]"):  # a file is there: clear it first, as a user would
            self.one("#refam-input button[aria-label=Clear]").click()
            self.wait.until(lambda d: self.all("#refam-input input[type=file]"))
        self.one("#refam-input input[type=file]").send_keys(str(path))
        self.wait.until(lambda d: self.all("#refam-preview img") or self.status())

    def type_expressions(self, text: str) -> None:
        box = self.one("#refam-expressions textarea")
        box.clear()
        box.send_keys(text)

    def segment(self, texts: list[str]) -> None:
        self.one("#refam-run").click()
        self.wait.until(lambda d: self.expressions() == texts)

    def rerun_until(self, item: str, wait: float = 60) -> None:
        """Wait for the shown result's settings to read `item` (a control's rerun has ended)."""
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.driver, wait).until(lambda d: any(item in s for s in self.settings()))

    def screenshot(self) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(self.driver.get_screenshot_as_png())).convert("RGB")).astype(int)


def fetch(url: str) -> bytes:
    assert url.startswith("http://127.0.0.1:")  # loopback only
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def test_the_page_segments_an_upload_and_shows_the_apis_masks_points_and_tokens(server, browser, model):
    texts = ["the black square", "the purple circle"]
    expected = model.segment(SCENE, texts, caption=CAPTION)
    page = Page(browser, server)
    page.upload(SCENE)
    page.type_expressions("\n".join(texts))
    page.one("#refam-caption textarea").send_keys(CAPTION)
    page.segment(texts)
    assert page.status() == ""
    facts = [e.text for e in page.all(".refam-card .refam-facts")]
    for fact, prediction in zip(facts, expected):
        x, y = (round(v, 2) for v in prediction.point)
        assert fact.startswith(f"point ({x:g}, {y:g})")
    chips = [[(c.text, c.get_attribute("class").split()[-1]) for c in card.find_elements(page.by.CSS_SELECTOR, ".refam-token")]
             for card in page.all(".refam-card")]
    for shown, prediction in zip(chips, expected):
        assert [t for t, state in shown if state == "refam-kept"] == [t.replace("▁", "") for t in prediction.kept_tokens]
    # the masks it offers are the API's
    links = page.wait.until(lambda d: [a.get_attribute("href") for a in page.all("#refam-downloads a")
                                       if a.get_attribute("href")])
    masks = [link for link in links if link.endswith("_mask.png")]
    assert len(masks) == 2 and any(link.endswith("run.json") for link in links)
    by_index = sorted(masks, key=lambda link: int(link.rsplit("/", 1)[-1].split("-", 1)[0]))
    for link, prediction in zip(by_index, expected):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(fetch(link)))) == 255, prediction.mask)
    if os.environ.get("REFAM_SERVE_SCREENSHOT"):  # the first card on a token's map, the second on its heatmap
        page.all(".refam-card")[0].find_elements(page.by.CSS_SELECTOR, ".refam-token")[3].click()  # "square"
        page.js("window.scrollTo(0, 0)")
        bottom = page.js("return document.querySelectorAll('.refam-card')[1].getBoundingClientRect().bottom")
        size = browser.get_window_size()
        browser.set_window_size(size["width"], size["height"] + int(bottom) + 24 - page.js("return innerHeight"))
        time.sleep(1)
        browser.save_screenshot(os.environ["REFAM_SERVE_SCREENSHOT"])
        browser.set_window_size(size["width"], size["height"])


def test_every_expression_has_a_card_outside_any_inner_scroll_and_a_token_shows_its_map_large(server, browser):
    texts = ["the black square", "the purple circle", "the red triangle",
             "the green circle at the top right of the picture"]  # longer than the 24 characters once shown
    page = Page(browser, server)
    page.upload(SCENE)
    page.type_expressions("\n".join(texts))
    page.segment(texts)  # every expression whole
    scrollers = page.js("""
        return [...document.querySelectorAll('.refam-card')].map(card => {
          const found = [];
          for (let node = card.parentElement; node && node !== document.body; node = node.parentElement) {
            const style = getComputedStyle(node);
            if (/auto|scroll/.test(style.overflowY + style.overflow) && node.scrollHeight > node.clientHeight + 1)
              found.push(node.id || node.className);
          }
          return found;
        });""")
    assert scrollers == [[], [], [], []]  # nothing between a card and the page scrolls on its own

    card = page.all(".refam-card")[1]
    chip = next(c for c in card.find_elements(page.by.CSS_SELECTOR, ".refam-token") if c.text == "circle")
    page.js("arguments[0].scrollIntoView({block: 'center'})", card)
    chip.click()
    shown = page.js("""
        const card = arguments[0];
        const visible = [...card.querySelectorAll('.refam-map-view [data-layer]')].filter(n => !n.hidden);
        const frame = card.querySelector('.refam-map-view .refam-frame').getBoundingClientRect();
        const top = document.elementFromPoint(frame.left + frame.width / 2, frame.top + 1);
        return {layers: visible.map(n => n.dataset.layer), caption: visible.map(n => n.innerText).join(' '),
                width: frame.width, grid: visible.filter(n => n.tagName === 'IMG').map(n => n.naturalWidth),
                topInFrame: top.closest('.refam-frame') === card.querySelector('.refam-map-view .refam-frame'),
                others: [...document.querySelectorAll('.refam-card')].filter(c => c !== card).map(
                  c => [...c.querySelectorAll('.refam-map')].filter(n => !n.hidden).map(n => n.dataset.layer))};
    """, card)
    assert shown["layers"] == ["token-2", "token-2"]  # the map and its caption, nothing else
    assert shown["grid"] == [16] and shown["width"] > 300  # the token grid, drawn large over the image
    assert "map of circle (kept)" in shown["caption"] and "one scale for this expression's 10 token maps" in shown["caption"]
    assert shown["topInFrame"]  # no label over the picture's first row
    assert shown["others"] == [["heatmap"]] * 3  # the other cards are left as they were


def red_disc(path: Path) -> np.ndarray:
    """A red disc on light grey (the demo's background colour), saved to `path`; its pixels."""
    ys, xs = np.mgrid[:128, :128]
    pixels = np.empty((128, 128, 3), dtype=np.uint8)
    pixels[:] = (226, 224, 218)
    pixels[(xs - 60) ** 2 + (ys - 64) ** 2 < 34 ** 2] = RED
    Image.fromarray(pixels).save(path)
    return pixels


def test_the_mask_is_outlined_in_a_contrasting_colour_and_the_object_keeps_its_colour(server, browser, model, tmp_path):
    """A blue tint showed a red circle purple: the outline stands apart and the inside is untouched,
    unless a light fill is asked for."""
    from scipy import ndimage

    scene = tmp_path / "red-disc.png"
    pixels = red_disc(scene)
    [expected] = model.segment(scene, ["the red circle"])
    page = Page(browser, server)
    page.upload(scene)
    page.type_expressions("the red circle")
    page.segment(["the red circle"])
    frame = page.one(".refam-card .refam-mask-view .refam-frame")
    page.js("arguments[0].scrollIntoView({block: 'center'})", frame)
    time.sleep(0.5)
    box = page.js("const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.width, r.height]", frame)
    swatch = page.js("return getComputedStyle(document.querySelector('.refam-swatch')).backgroundColor")
    outline = np.array([int(v) for v in swatch[swatch.index("(") + 1:-1].split(",")])

    def at(image: np.ndarray, where: np.ndarray) -> np.ndarray:
        """The screenshot's pixels at image pixels `where` (a mask), sampled at their centres."""
        ys, xs = np.nonzero(where)
        return image[(box[1] + (ys + 0.5) * box[3] / 128).astype(int), (box[0] + (xs + 0.5) * box[2] / 128).astype(int)]

    x, y = expected.point
    ys, xs = np.mgrid[:128, :128]
    inside = ndimage.binary_erosion(expected.mask, iterations=4) & ((xs - x) ** 2 + (ys - y) ** 2 > 12 ** 2)  # off the star
    assert inside.sum() > 500
    shot = page.screenshot()
    assert np.abs(at(shot, inside) - pixels[inside]).max() <= 6  # the object keeps its colour: red, not purple
    crop = shot[int(box[1]):int(box[1] + box[3]), int(box[0]):int(box[0] + box[2])]
    drawn = np.abs(crop - outline).max(axis=-1) <= 30
    assert drawn.sum() > 300  # the outline is there, in the colour the card names ...
    assert min(np.linalg.norm(outline - np.array(c)) for c in (RED, (226, 224, 218))) > 150  # ... apart from both sides
    page.one("#refam-fill input").click()  # a light fill, on request
    time.sleep(0.5)
    filled = at(page.screenshot(), inside)
    assert np.abs(filled - pixels[inside]).max() > 20 and np.all(filled[:, 0] > filled[:, 1:].max(axis=1))  # still red-led
    page.one("#refam-fill input").click()
    time.sleep(0.5)
    assert np.abs(at(page.screenshot(), inside) - pixels[inside]).max() <= 6


def test_every_control_reruns_beside_its_settings_and_a_pinned_result_compares(server, browser):
    from selenium.webdriver.common.keys import Keys

    page = Page(browser, server)
    page.upload(SCENE)
    page.type_expressions("the black square")
    page.segment(["the black square"])
    [panel] = page.settings()
    for item in ("magnets: on: _ with to and pink", "stop-word filter: on", "GAS: report", "blocks: 0-3",
                 "noise sigma: 0.75", "spatial bias: none"):
        assert item in panel  # the settings of the shown result
    # a value typed in a slider's box, then Enter
    for slider, value, item in (("#refam-noise", "0.5", "noise sigma: 0.5"), ("#refam-first-block", "1", "blocks: 1-3")):
        box = page.one(f"{slider} input[type=number]")
        page.js("arguments[0].scrollIntoView({block: 'center'})", box)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value, Keys.ENTER)
        page.rerun_until(item, wait=30)
    words = page.one("#refam-magnet-words textarea, #refam-magnet-words input")
    words.send_keys(Keys.CONTROL, "a")
    words.send_keys("_ with", Keys.ENTER)
    page.rerun_until("magnets: on: _ with ")
    for control, item in (("#refam-gas input[value=drop]", "GAS: drop"),
                          ("#refam-spatial input[value=direction]", "spatial bias: direction"),
                          ("#refam-stop-words input", "stop-word filter: off")):
        element = page.one(control)
        page.js("arguments[0].scrollIntoView({block: 'center'})", element)
        element.click()
        page.rerun_until(item)
    assert page.status() == ""
    # pin, flip the magnets: the two results side by side, the setting that differs marked on each
    page.one("#refam-pin").click()
    page.wait.until(lambda d: "change a setting" in page.one("#refam-results").text)
    page.one("#refam-magnets input").click()
    page.wait.until(lambda d: page.all(".refam-compare"))
    pinned, shown = page.settings()
    assert pinned.startswith("pinned") and "magnets: on: _ with" in pinned
    assert shown.startswith("shown") and "magnets: off" in shown
    assert [e.text for e in page.all(".refam-differs")] == ["magnets: on: _ with", "magnets: off"]
    assert page.expressions() == ["the black square"] * 2
    left, right = (page.js("return arguments[0].getBoundingClientRect().left", c) for c in page.all(".refam-card"))
    assert right > left + 300  # side by side
    page.one("#refam-unpin").click()
    page.wait.until(lambda d: not page.all(".refam-compare") and page.expressions() == ["the black square"])


def test_an_error_is_one_styled_line_in_the_pages_words_and_the_last_result_stays(server, browser, tmp_path):
    page = Page(browser, server)
    page.upload(SCENE)
    page.type_expressions("the black square")
    page.segment(["the black square"])
    before = page.one("#refam-results").get_attribute("innerHTML")
    page.type_expressions("   ")
    page.one("#refam-run").click()
    page.wait.until(lambda d: page.all("#refam-status .refam-error"))
    assert page.status() == "an expression is empty: give the words that name the object"
    style = page.js("""
        const line = document.querySelector('#refam-status .refam-error'), style = getComputedStyle(line);
        return {colour: style.color, background: style.backgroundColor, height: line.getBoundingClientRect().height,
                lineHeight: parseFloat(style.lineHeight) || 20, role: line.getAttribute('role'),
                sign: getComputedStyle(line, '::before').content};""")
    red, green = (int(v) for v in style["colour"][style["colour"].index("(") + 1:].split(",")[:2])
    assert red > green + 60 and style["background"] != "rgba(0, 0, 0, 0)" and style["role"] == "alert"
    assert style["sign"] == '"⚠ "'
    assert style["height"] < 2 * style["lineHeight"] + 16  # one line
    assert page.one("#refam-results").get_attribute("innerHTML") == before  # the last result stays
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    page.upload(broken)
    page.wait.until(lambda d: "broken.png" in page.status())
    assert page.status() == "cannot read broken.png as an image: give a PNG, JPEG or another common format"
    assert "/tmp" not in page.one("#refam-status").get_attribute("innerHTML")
    assert page.expressions() == ["the black square"]


def test_an_expression_naming_nothing_in_the_scene_shows_the_flag_as_a_caution(server, browser, model, tmp_path):
    """A held-out scene of a red triangle and a blue circle: "the black shape" is flagged as the API
    flags it, its card shows the caution in amber (not the error's red) with the flag's warning and
    measured rates; the present "the blue circle" shows none."""
    from refam.shapes.varied import make_varied_scene

    scene = tmp_path / "held-out-20007.png"
    make_varied_scene("test", 20007).image.save(scene)
    texts = ["the blue circle", "the black shape"]
    expected = model.segment(scene, texts)
    assert [p.no_referent for p in expected] == [False, True]
    page = Page(browser, server)
    page.upload(scene)
    page.type_expressions("\n".join(texts))
    page.segment(texts)
    circle, black = page.all(".refam-card")
    assert not circle.find_elements(page.by.CSS_SELECTOR, ".refam-no-referent, .refam-warnings")
    [caution] = black.find_elements(page.by.CSS_SELECTOR, ".refam-no-referent")
    assert caution.is_displayed() and caution.text.startswith("no referent? this expression may name nothing")
    warnings = [w.text for w in black.find_elements(page.by.CSS_SELECTOR, ".refam-warnings li")]
    assert warnings == expected[1].warnings and "of expressions naming an absent object" in warnings[0]
    style = page.js("""const s = getComputedStyle(arguments[0]);
        return {background: s.backgroundColor, colour: s.color, border: s.borderLeftColor, width: s.borderLeftWidth,
                role: arguments[0].getAttribute('role')};""", caution)
    assert style == {"background": "rgb(255, 244, 214)", "colour": "rgb(122, 75, 0)", "border": "rgb(232, 164, 0)",
                     "width": "5px", "role": "note"}  # amber, a note: not the error's red alert
    top = page.js("return arguments[0].getBoundingClientRect().top", caution)
    assert top < page.js("return arguments[0].querySelector('.refam-pictures').getBoundingClientRect().top", black)


def test_a_negative_click_and_a_positive_click_move_the_mask_and_undo_restores_it(server, browser, model):
    """Shift-click on the model's wrong object, a click on the right one: the mask the page offers is
    the API's for those points, on the right object; undo, twice, gives the model's mask back."""
    import json

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    square, circle = model.segment(SCENE, ["the black square", "the purple circle"])
    page = Page(browser, server)
    page.upload(SCENE)
    page.type_expressions("the black square")
    page.segment(["the black square"])

    def click(x: float, y: float, negative: bool, facts: str) -> None:
        frame = page.one(".refam-card .refam-mask-view .refam-frame")
        page.js("arguments[0].scrollIntoView({block: 'center'})", frame)
        width, height = page.js("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height]", frame)
        size = Image.open(SCENE).size
        offset = (int((x + 0.5) / size[0] * width - width / 2), int((y + 0.5) / size[1] * height - height / 2))
        actions = ActionChains(browser)
        if negative:
            actions.key_down(Keys.SHIFT)
        actions.move_to_element_with_offset(frame, *offset).click()
        if negative:
            actions.key_up(Keys.SHIFT)
        actions.perform()
        page.wait.until(lambda d: facts in page.one(".refam-card .refam-facts").text)

    def offered() -> tuple[np.ndarray, list]:
        links = [a.get_attribute("href") for a in page.all("#refam-downloads a") if a.get_attribute("href")]
        mask = np.asarray(Image.open(io.BytesIO(fetch(next(link for link in links if link.endswith("_mask.png")))))) == 255
        [entry] = json.loads(fetch(next(link for link in links if link.endswith("run.json"))))["run"]["expressions"]
        return mask, [(p["x"], p["y"], p["label"]) for p in entry["points"] if p["source"] == "user"]

    click(*square.point, negative=True, facts="your points: 0 this, 1 not this")
    click(*circle.point, negative=False, facts="your points: 1 this, 1 not this")
    assert page.status() == ""
    mask, points = offered()
    assert [label for _, _, label in points] == [0, 1]
    [expected] = model.segment(SCENE, ["the black square"], points=[points])
    assert np.array_equal(mask, expected.mask)  # the API's mask for the points the page recorded
    assert (mask & circle.mask).sum() > 0.9 * circle.mask.sum() and not (mask & square.mask).any()  # moved
    assert len(page.all(".refam-card .refam-mask-view .refam-point")) == 2  # drawn where clicked
    for _ in points:
        before = page.one(".refam-card .refam-facts").text
        page.one("#refam-undo").click()
        page.wait.until(lambda d: page.one(".refam-card .refam-facts").text != before)
    assert "your points" not in page.one(".refam-card .refam-facts").text
    mask, points = offered()
    assert points == [] and np.array_equal(mask, square.mask)  # the model's mask again


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


def test_a_video_plays_an_animated_gif_runs_as_one_and_its_masks_play_with_the_key_frames_maps(server, browser, tmp_path):
    import cv2

    frames = [Image.open(p).convert("RGB") for p in CLIP_FRAMES]
    mp4 = str(tmp_path / "clip.mp4")  # MPEG-4 Part 2: a browser does not play this file itself
    writer = cv2.VideoWriter(mp4, cv2.VideoWriter_fourcc(*"mp4v"), 5, frames[0].size)
    for frame in frames:
        writer.write(np.asarray(frame)[:, :, ::-1].copy())
    writer.release()
    gif, still = tmp_path / "moving.gif", tmp_path / "still.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=200, loop=0)
    frames[0].save(still)

    def upload(path) -> Page:
        """A fresh page; a click in it first, as a user's to upload (a browser autoplays after one)."""
        page = Page(browser, server)
        page.one("#refam-expressions textarea").click()
        page.one("#refam-input input[type=file]").send_keys(str(path))
        return page

    page = upload(mp4)
    assert_plays(browser, "#refam-preview-video video", seconds=1.0)  # 5 frames at 5 fps, played
    page.wait.until(lambda d: page.status() == "video: clip.mp4, 5 frames at 5 fps")

    page = upload(gif)  # an animated GIF: a video too, not a still
    assert_plays(browser, "#refam-preview-video video", seconds=1.0)
    assert not page.all("#refam-preview img")
    page.type_expressions("the black square\nthe orange circle")
    page.segment(["the black square", "the orange circle"])
    assert page.status() == "" and "2 expression(s) x 5 frames" in page.settings()[0]
    assert_plays(browser, "#refam-clip video", seconds=1.0)  # the tracked masks, every frame
    # the key frame's maps, saying which frame: a card per expression with its mask, heatmap and token maps
    facts = [e.text for e in page.all(".refam-card .refam-facts")]
    assert len(facts) == 2 and all("key frame 0" in fact for fact in facts), facts
    assert all(card.find_elements(page.by.CSS_SELECTOR, ".refam-map[data-layer=token-0]") for card in page.all(".refam-card"))

    page = upload(still)  # a still GIF stays an image
    page.wait.until(lambda d: page.all("#refam-preview img"))
    assert not video_state(browser, "#refam-preview-video video") and page.status() == ""


def test_a_run_downloaded_from_the_page_and_given_as_config_comes_back_whole(server, browser, tmp_path):
    import json

    texts = ["the black square", "the purple circle"]
    page = Page(browser, server)
    page.upload(SCENE)
    page.type_expressions("\n".join(texts))
    page.one("#refam-caption textarea").send_keys(CAPTION)
    page.one("#refam-magnets input[type=checkbox]").click()  # a setting, restored by the model section
    page.segment(texts)
    page.rerun_until("magnets: off")
    links = page.wait.until(lambda d: [a.get_attribute("href") for a in page.all("#refam-downloads a")
                                       if a.get_attribute("href")])
    for name in ("run.json", SCENE.name):  # saved side by side, as a browser's downloads are
        (tmp_path / name).write_bytes(fetch(next(link for link in links if link.endswith("/" + name))))
    record = json.loads((tmp_path / "run.json").read_text())

    with serving(tmp_path, "--config", str(tmp_path / "run.json")) as restored:
        page = Page(browser, restored, ready="#refam-preview img")  # the input, previewed
        assert SCENE.name in page.one("#refam-input").text.replace("\n", "")  # (the name is shown in two parts)
        assert page.one("#refam-expressions textarea").get_attribute("value") == "\n".join(texts)
        assert page.one("#refam-caption textarea").get_attribute("value") == CAPTION
        assert not page.one("#refam-magnets input[type=checkbox]").is_selected()
        page.segment(texts)  # as it was: the same points
        facts = [e.text for e in page.all(".refam-card .refam-facts")]
        for fact, entry in zip(facts, record["run"]["expressions"], strict=True):
            x, y = entry["point"]
            assert fact.startswith(f"point ({x:g}, {y:g})")
