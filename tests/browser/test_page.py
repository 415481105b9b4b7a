"""The demo page in a real browser: Debian's headless Chromium driven through its chromedriver by
Selenium, against the real gateway and Triton (session fixtures). Every wait is bounded.

Screenshots are kept in test-artifacts/browser/ (TEST_ARTIFACTS to move them).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from service.colormaps import lut
from tests.helpers import ROOT, free_port, local_gateway

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
WAIT_S = 30  # for any one thing the page should do
SAMPLES = {"digit-7.png": ("7", 32), "digit-3.jpg": ("3", 256)}  # label, width
# What Chromium needs here: no GPU, no sandbox (root in a container), nothing fetched.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1280,1400",
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            pytest.fail(f"{path} missing: run scripts/system-deps.sh (make test does)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    log = profile.parent / "chromedriver.log"
    # A given driver path means Selenium Manager never runs (it would try to download one).
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER, log_output=str(log)))
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: webdriver.Chrome, gateway) -> webdriver.Chrome:
    """The page freshly loaded, once /info has filled the controls."""
    browser.set_window_size(1280, 1400)
    browser.get(gateway.url + "/")
    WebDriverWait(browser, WAIT_S).until(
        lambda d: len(Select(d.find_element(By.ID, "precision")).options) == 3
    )
    return browser


@pytest.fixture(scope="module")
def broken_gateway(repository):
    """A gateway whose Triton is gone, with a small body limit: the 503 and 413 paths."""
    with local_gateway(free_port(), repository, MAX_BODY_BYTES="4096") as gateway:
        yield gateway


def upload(driver: webdriver.Chrome, *paths: Path) -> None:
    driver.find_element(By.ID, "file").send_keys("\n".join(str(p) for p in paths))


def card(driver: webdriver.Chrome, name: str) -> WebElement:
    for element in driver.find_elements(By.CSS_SELECTOR, ".card"):
        if element.find_element(By.CSS_SELECTOR, ".name").text == name:
            return element
    raise LookupError(name)


def wait_for(driver: webdriver.Chrome, name: str, state: str, after_generation: int = 0) -> None:
    def settled(d: webdriver.Chrome) -> bool:
        try:
            el = card(d, name)
        except LookupError:
            return False
        generation = int(el.get_attribute("data-generation") or 0)
        return el.get_attribute("data-state") == state and generation > after_generation

    WebDriverWait(driver, WAIT_S).until(settled, f"card {name} never reached {state}")


def canvas_pixels(driver: webdriver.Chrome, element: WebElement) -> np.ndarray:
    url = driver.execute_script("return arguments[0].toDataURL('image/png')", element)
    return decode_data_url(url)


def decode_data_url(url: str) -> np.ndarray:
    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int32)


def expected_heatmap(heatmap: dict, size: tuple[int, int], colormap: str) -> np.ndarray:
    """What the heatmap panel should show: the API's grid, bilinear, coloured with the table."""
    grid = Image.fromarray(np.array(heatmap["grid"], np.float32), mode="F")
    values = np.asarray(grid.resize(size, Image.Resampling.BILINEAR))
    return lut(colormap)[np.clip(np.rint(values * 255), 0, 255).astype(np.uint8)].astype(np.int32)


def api_heatmap(http, sample: Path, fusion: str | None = None, **params: str) -> dict:
    r = http.post(
        "/explain",
        params={"output": "json", **({"head_fusion": fusion} if fusion else {}), **params},
        files=[("file", (sample.name, sample.read_bytes(), "image/png"))],
    )
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["heatmap"]


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path)), path
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 0
    return path


def test_upload_shows_labels_heatmaps_and_a_fusion_change_redraws_them(page, http):
    samples = [ROOT / "samples" / name for name in SAMPLES]
    upload(page, *samples)
    for name, (label, width) in SAMPLES.items():
        wait_for(page, name, "done")
        el = card(page, name)
        top = el.find_element(By.CSS_SELECTOR, ".topk li .label").text
        assert top == label, f"{name}: top-1 shown is {top}"
        assert el.find_element(By.CSS_SELECTOR, ".status").text.startswith(f"{label} (")
        stages = el.find_elements(By.CSS_SELECTOR, ".timings dt")
        assert {"triton", "render", "total", "round trip"} <= {s.text for s in stages}
        overlay = el.find_element(By.CSS_SELECTOR, ".overlay")
        assert page.execute_script("return arguments[0].naturalWidth", overlay) == width
        assert el.find_element(By.CSS_SELECTOR, ".size").text == f"{width}×{width}"

    seven = samples[0]
    panel = card(page, seven.name).find_element(By.CSS_SELECTOR, ".heatmap")
    mean = canvas_pixels(page, panel)
    assert mean.shape == (256, 256, 3) and mean.std() > 10  # a picture, not a blank panel
    expected = expected_heatmap(api_heatmap(http, seven, "mean"), (256, 256), "inferno")
    assert np.abs(mean - expected).mean() < 1.0  # the API's grid, drawn the right way up
    overlay_before = card(page, seven.name).find_element(By.CSS_SELECTOR, ".overlay")
    overlay_mean = decode_data_url(overlay_before.get_attribute("src"))

    generation = int(card(page, seven.name).get_attribute("data-generation"))
    Select(page.find_element(By.ID, "head_fusion")).select_by_value("max")
    wait_for(page, seven.name, "done", after_generation=generation)
    el = card(page, seven.name)
    maxed = canvas_pixels(page, el.find_element(By.CSS_SELECTOR, ".heatmap"))
    assert np.abs(maxed - mean).mean() > 5  # the heatmap changed with the fusion
    expected = expected_heatmap(api_heatmap(http, seven, "max"), (256, 256), "inferno")
    assert np.abs(maxed - expected).mean() < 1.0
    overlay_max = decode_data_url(el.find_element(By.CSS_SELECTOR, ".overlay").get_attribute("src"))
    assert np.abs(overlay_max - overlay_mean).mean() > 2  # and so did the overlay
    assert "max" in el.find_element(By.CSS_SELECTOR, ".heatmap-caption").text

    slider = page.find_element(By.ID, "discard_ratio")
    if slider.is_enabled():  # the explain models take discard_ratio: the keyboard moves it
        generation = int(el.get_attribute("data-generation"))
        slider.send_keys(Keys.END)  # 0.99: nearly all attention discarded, per layer
        wait_for(page, seven.name, "done", after_generation=generation)
        el = card(page, seven.name)
        assert "discard 0.99" in el.find_element(By.CSS_SELECTOR, ".heatmap-caption").text
        filtered = canvas_pixels(page, el.find_element(By.CSS_SELECTOR, ".heatmap"))
        assert np.abs(filtered - maxed).mean() > 5
    else:
        hint = page.find_element(By.ID, "discard-hint").text
        assert "built without discard_ratio" in hint
    screenshot(page, "page.png")


def test_a_non_image_shows_the_api_error_as_it_is(page, http, tmp_path):
    note = tmp_path / "notes.txt"
    note.write_text("not a picture\n")
    upload(page, note)
    wait_for(page, note.name, "error")
    shown = card(page, note.name).find_element(By.CSS_SELECTOR, ".error").text
    api = http.post("/explain", files=[("file", (note.name, note.read_bytes(), "text/plain"))])
    assert api.status_code == 415
    error = api.json()["error"]
    assert shown == f"415 {error['code']}: {error['message']}"
    failed = card(page, note.name)
    assert not failed.find_element(By.CSS_SELECTOR, ".overlay").is_displayed()  # no stale panels
    assert not failed.find_elements(By.CSS_SELECTOR, ".original")  # the browser cannot draw it
    screenshot(page, "non-image-error.png")


def test_keyboard_only_and_a_phone_sized_window(page):
    page.set_window_size(390, 844)
    upload(page, ROOT / "samples" / "digit-7.png")
    wait_for(page, "digit-7.png", "done")
    width = page.execute_script("return [document.documentElement.scrollWidth, innerWidth]")
    assert width[0] <= width[1], f"horizontal scrolling on a phone: {width}"

    focused = []  # Tab from the top of the page reaches every control, in reading order
    for _ in range(12):
        ActionChains(page).send_keys(Keys.TAB).perform()
        focused.append(page.switch_to.active_element.get_attribute("id"))
    controls = [
        "file", "precision", "method", "head_fusion", "colormap", "alpha", "discard_ratio", "top_k",
    ]  # fmt: skip
    if not page.find_element(By.ID, "discard_ratio").is_enabled():  # a model built without it
        assert "built without discard_ratio" in page.find_element(By.ID, "discard-hint").text
        controls.remove("discard_ratio")
    assert [f for f in focused if f in controls][: len(controls)] == controls

    generation = int(card(page, "digit-7.png").get_attribute("data-generation"))
    alpha = page.find_element(By.ID, "alpha")
    alpha.send_keys(Keys.ARROW_RIGHT)  # keyboard on the slider: 0.5 -> 0.55, and a new overlay
    assert page.find_element(By.ID, "alpha-value").text == "0.55"
    wait_for(page, "digit-7.png", "done", after_generation=generation)
    page.execute_script("arguments[0].scrollIntoView()", card(page, "digit-7.png"))
    screenshot(page, "phone.png")


def test_picking_the_second_class_shows_its_attribution_map(page, http):
    seven = ROOT / "samples" / "digit-7.png"
    served = http.get("/info").json()["attribution"]
    assert "fp32" in served, f"no attribution model for the page's default precision: {served}"
    upload(page, seven)
    wait_for(page, seven.name, "done")
    el = card(page, seven.name)
    assert "the same for every class" in el.find_element(By.CSS_SELECTOR, ".explained").text
    rollout = canvas_pixels(page, el.find_element(By.CSS_SELECTOR, ".heatmap"))
    picks = el.find_elements(By.CSS_SELECTOR, ".topk .pick")
    assert len(picks) == 5 and all(p.is_enabled() for p in picks)
    first, second = (p.get_attribute("data-class-index") for p in picks[:2])
    second_label = picks[1].find_element(By.CSS_SELECTOR, ".label").text

    generation = int(el.get_attribute("data-generation"))
    picks[0].click()  # the top-1: the page switches to attribution
    wait_for(page, seven.name, "done", after_generation=generation)
    assert Select(page.find_element(By.ID, "method")).first_selected_option.text == (
        "class attribution"
    )
    assert not page.find_element(By.ID, "head_fusion").is_enabled()  # a rollout setting
    el = card(page, seven.name)
    assert el.find_element(By.CSS_SELECTOR, ".explained").text.startswith(
        f"Explaining class {first} “7”"
    )
    top1 = canvas_pixels(page, el.find_element(By.CSS_SELECTOR, ".heatmap"))
    assert np.abs(top1 - rollout).mean() > 2  # attribution is not the rollout map
    overlay_top1 = decode_data_url(
        el.find_element(By.CSS_SELECTOR, ".overlay").get_attribute("src")
    )

    generation = int(el.get_attribute("data-generation"))
    el.find_elements(By.CSS_SELECTOR, ".topk .pick")[1].click()
    wait_for(page, seven.name, "done", after_generation=generation)
    el = card(page, seven.name)
    explained = el.find_element(By.CSS_SELECTOR, ".explained").text
    assert explained.startswith(f"Explaining class {second} “{second_label}” (")
    assert "top-1" not in explained
    assert second_label in el.find_element(By.CSS_SELECTOR, ".heatmap-caption").text
    pressed = el.find_elements(By.CSS_SELECTOR, '.topk .pick[aria-pressed="true"]')
    assert [p.get_attribute("data-class-index") for p in pressed] == [second]
    other = canvas_pixels(page, el.find_element(By.CSS_SELECTOR, ".heatmap"))
    assert np.abs(other - top1).mean() > 2  # the map changed with the class
    overlay = decode_data_url(el.find_element(By.CSS_SELECTOR, ".overlay").get_attribute("src"))
    assert np.abs(overlay - overlay_top1).mean() > 1  # and so did the overlay
    expected = expected_heatmap(
        api_heatmap(http, seven, method="attribution", target_class=second), (256, 256), "inferno"
    )
    assert np.abs(other - expected).mean() < 1.0  # the API's map of that class, drawn right
    screenshot(page, "attribution.png")


def test_413_and_503_are_shown_as_the_api_words_them(browser, broken_gateway):
    browser.set_window_size(1280, 1400)
    browser.get(broken_gateway.url + "/")
    banner = browser.find_element(By.ID, "service-error")
    WebDriverWait(browser, WAIT_S).until(lambda d: banner.is_displayed())
    # What the page shows is what the API says, word for word (the gateway's own wording).
    info = httpx.get(broken_gateway.url + "/info", timeout=10).json()
    assert info["triton_error"] and banner.text.startswith(f"Triton: {info['triton_error']}")
    big, small = ROOT / "samples" / "digit-3.jpg", ROOT / "samples" / "digit-7.png"
    assert big.stat().st_size > 4096 > small.stat().st_size + 1024
    upload(browser, big, small)
    wait_for(browser, big.name, "error")
    shown = card(browser, big.name).find_element(By.CSS_SELECTOR, ".error").text
    assert shown == "413 payload_too_large: request body exceeds 4096 bytes"
    wait_for(browser, small.name, "error")
    shown = card(browser, small.name).find_element(By.CSS_SELECTOR, ".error").text
    api = httpx.post(
        broken_gateway.url + "/explain?output=json",
        content=small.read_bytes(),
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    error = api.json()["error"]
    assert api.status_code == 503 and error["code"] == "triton_unavailable"
    assert shown.startswith(f"503 triton_unavailable: {error['message']}")
    assert shown.endswith("(Retry-After: 1 s)")
    screenshot(browser, "errors.png")
