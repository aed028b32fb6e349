"""The web playground at ``/`` and Swagger UI at ``/docs`` in a real headless Chromium (Debian's ``chromium``,
driven by Playwright) against a real gateway on loopback, with API keys on (the page sends the key).

Every request the browser makes to anything but the gateway is refused and recorded: the pages must work
offline. ``PLAYGROUND_SCREENSHOT=docs/playground.png pytest tests/test_playground.py`` rewrites the README's
screenshot (the page at 1280x800 after ``/?demo=1``).
"""

from __future__ import annotations

import base64
import csv
import io
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from gateway_helpers import REPO, Gateway, decode_png_b64, png_b64
from PIL import Image
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, Route, sync_playwright

from conftest import API_KEY, Gateways

pytestmark = pytest.mark.browser

KEY = API_KEY
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# flags for a container as root: no sandbox, no GPU, and nothing that phones home
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def gw(gateways: Gateways, model_path: Path) -> Gateway:
    return gateways.shared({"IVIDEOGPT_MODEL_DIR": str(model_path), "IVIDEOGPT_API_KEYS": KEY}, grpc=True)


@pytest.fixture(scope="module")
def browser() -> Browser:
    assert Path(CHROMIUM).is_file(), "Debian's chromium is missing: apt-get install chromium chromium-driver"
    with sync_playwright() as pw:
        b = launch(pw)
        yield b
        b.close()


def launch(pw: Playwright) -> Browser:
    return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


class Offline:
    """Lets requests to the gateway through and refuses (and records) every other one."""

    def __init__(self, gateway_url: str):
        self.host = urlsplit(gateway_url).netloc
        self.refused: list[str] = []

    def __call__(self, route: Route) -> None:
        url = route.request.url
        if urlsplit(url).netloc == self.host or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.refused.append(url)
            route.abort()


def new_context(browser: Browser, gw: Gateway, key: str | None = KEY, **kw) -> tuple[BrowserContext, Offline]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True, **kw)
    offline = Offline(gw.url)
    ctx.route("**/*", offline)
    if key:
        ctx.add_init_script(f"localStorage.setItem('ivideogpt.api_key', {key!r})")
    return ctx, offline


@pytest.fixture
def page(browser: Browser, gw: Gateway):
    ctx, offline = new_context(browser, gw)
    p = ctx.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    yield p
    ctx.close()
    assert not errors, errors  # no uncaught exception in the page's scripts
    assert not offline.refused, offline.refused


def api(gw: Gateway) -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers={"X-API-Key": KEY}, timeout=60.0)


def open_page(page: Page, gw: Gateway, query: str = "") -> None:
    page.goto(f"{gw.url}/{query}")
    page.wait_for_function("document.querySelector('#model-info').textContent.includes('frames')", timeout=WAIT_MS)


def session_id(page: Page) -> str:
    return page.get_attribute("#session-info", "data-session-id") or ""


def wait_frames(page: Page, n: int) -> None:
    """Until n frames are on the page and no step is in flight or queued."""
    page.wait_for_function(
        f"document.querySelectorAll('#filmstrip img').length >= {n} && document.body.dataset.busy === 'false'"
        " && document.querySelector('#queue').textContent === ''",
        timeout=WAIT_MS,
    )


def shown_frames(page: Page) -> list[str]:
    return page.eval_on_selector_all("#filmstrip img", "imgs => imgs.map(i => i.src.split(',')[1])")


def download(page: Page, button: str) -> bytes:
    with page.expect_download() as d:
        page.click(button)
    return Path(d.value.path()).read_bytes()


def test_keys_step_the_session_frames_stream_in_and_rewards_are_plotted(page: Page, gw: Gateway) -> None:
    open_page(page, gw)
    # the API plans (/openapi.json lists POST /v1/sessions/{session_id}/plan): the Plan button shows
    page.wait_for_selector("#plan", state="visible", timeout=WAIT_MS)
    page.select_option("#episode", "7")  # a push-v3 episode
    page.fill("#start", "5")
    page.click("#load-sample")
    page.wait_for_function("document.querySelector('#session-info').textContent.includes('step_index 0')")
    sid = session_id(page)
    assert "push-v3/ep00002.npz, frames 5–6" in page.inner_text("#context-source")

    keys = ["ArrowRight", "w", "e", "Space", "ArrowLeft", "s"]
    for key in keys:  # focus is still on the button: space must drive, not press it again
        page.keyboard.press(key)
    n = len(keys)
    wait_frames(page, n)
    assert session_id(page) == sid  # the same session all along

    frames = shown_frames(page)
    assert len(frames) == n and len(set(frames)) == n  # n frames, all different
    assert page.locator("#reward-plot circle.point").count() == n
    assert page.inner_text("#frame-index") == f"t = {n} / {n}"
    assert page.get_attribute("#frame", "data-t") == str(n)
    for readout in ("#latency", "#first-frame"):
        assert page.inner_text(readout).endswith(" ms")
    assert float(page.inner_text("#fps")) > 0

    # the actions as CSV: one row per frame, in the model's bounds ([-1, 1]); space closed the gripper
    rows = [[float(v) for v in row] for row in csv.reader(io.StringIO(download(page, "#download-csv").decode()))]
    expected = [[1, 0, 0, -1], [0, 1, 0, -1], [0, 0, 1, -1], [0, 0, 0, 1], [-1, 0, 0, 1], [0, -1, 0, 1]]
    assert rows == expected

    # what the page showed is the session's rollout: a retry of those steps returns the same frames
    with api(gw) as client:
        info = client.get(f"/v1/sessions/{sid}").json()
        assert info["step_index"] == n
        replay = client.post(f"/v1/sessions/{sid}/step", json={"actions": rows, "step_index": 0}).json()
    assert replay["step_index"] == n
    for ours, theirs in zip(frames, replay["frames"], strict=True):
        assert np.array_equal(decode_png_b64(ours), decode_png_b64(theirs))
    plotted = page.eval_on_selector_all("#reward-plot circle.point", "cs => cs.map(c => Number(c.dataset.reward))")
    assert np.allclose(plotted, replay["rewards"], atol=1e-6)

    # the rollout as a GIF, drawn by the gateway: 2 context frames + n predicted, 4x upscaled
    gif = Image.open(io.BytesIO(download(page, "#download-gif")))
    assert gif.format == "GIF" and gif.n_frames == 2 + n and gif.size == (256, 256)


def test_imagine_ranks_k_futures_and_steps_the_chosen_one(page: Page, gw: Gateway) -> None:
    open_page(page, gw)
    page.click("#load-sample")
    page.wait_for_function("document.querySelector('#session-info').textContent.includes('step_index 0')")
    sid = session_id(page)
    page.fill("#imagine-k", "4")
    page.fill("#imagine-h", "3")
    page.click("#imagine")
    page.wait_for_selector("#futures .future", timeout=WAIT_MS)
    cards = page.locator("#futures .future")
    assert cards.count() == 4
    returns = [float(c.get_attribute("data-return")) for c in cards.all()]
    assert returns == sorted(returns, reverse=True)  # best first
    assert len(set(returns)) > 1
    for card in cards.all():
        assert card.locator(".thumbs img").count() == 3  # frames on request
    with api(gw) as client:
        assert client.get(f"/v1/sessions/{sid}").json()["step_index"] == 0  # imagining changes nothing

    # stepping the best future: one request of 3 actions whose frames stream in one by one
    cards.first.locator("button").click()
    wait_frames(page, 3)
    assert page.locator("#reward-plot circle.point").count() == 3
    first, total = (int(page.inner_text(r).removesuffix(" ms")) for r in ("#first-frame", "#latency"))
    assert first < total  # the first frame was on screen before the request was done
    with api(gw) as client:
        assert client.get(f"/v1/sessions/{sid}").json()["step_index"] == 3


def test_plan_plays_the_planned_actions(page: Page, gw: Gateway) -> None:
    """Plan asks the gateway for the best actions over the Imagine horizon, then steps them over the stream."""
    open_page(page, gw)
    page.click("#load-sample")
    page.wait_for_function("document.querySelector('#session-info').textContent.includes('step_index 0')")
    sid = session_id(page)
    page.fill("#imagine-h", "3")
    with api(gw) as client:  # a plan leaves the session as it is, and the same seed gives the same plan
        seed = client.get(f"/v1/sessions/{sid}").json()["sampling"]["seed"]
        expected = client.post(f"/v1/sessions/{sid}/plan", json={"horizon": 3, "seed": seed}).json()["actions"]
    page.click("#plan")
    wait_frames(page, 3)
    assert page.locator("#reward-plot circle.point").count() == 3
    rows = [[float(v) for v in row] for row in csv.reader(io.StringIO(download(page, "#download-csv").decode()))]
    np.testing.assert_allclose(rows, expected, atol=1e-6)  # the planned actions, played as planned
    with api(gw) as client:
        assert client.get(f"/v1/sessions/{sid}").json()["step_index"] == 3


def test_a_bad_upload_shows_the_api_error_with_its_field(page: Page, gw: Gateway, tmp_path: Path) -> None:
    open_page(page, gw)
    good, small, text = tmp_path / "good.png", tmp_path / "small.png", tmp_path / "notes.png"
    good.write_bytes(base64.b64decode(png_b64(np.full((64, 64, 3), 90, np.uint8))))
    small.write_bytes(base64.b64decode(png_b64(np.zeros((32, 32, 3), np.uint8))))
    text.write_text("not an image")

    page.set_input_files("#upload", [str(good), str(small)])
    error = page.wait_for_selector('.error[data-field="context_frames[1]"]', timeout=WAIT_MS)
    assert "422 invalid_input" in error.inner_text() and "image size 32x32" in error.inner_text()

    page.set_input_files("#upload", [str(text), str(good)])
    error = page.wait_for_selector('.error[data-field="context_frames[0]"]', timeout=WAIT_MS)
    assert "not a PNG image" in error.inner_text()
    assert session_id(page) == ""  # nothing was opened

    page.set_input_files("#upload", [str(good), str(good)])  # right ones: a session on them
    page.wait_for_function("document.querySelector('#session-info').textContent.includes('step_index 0')")
    assert "uploaded: good.png, good.png" in page.inner_text("#context-source")


def test_without_the_key_the_401_is_shown_and_the_key_field_fixes_it(browser: Browser, gw: Gateway) -> None:
    ctx, offline = new_context(browser, gw, key=None)
    try:
        page = ctx.new_page()
        page.goto(gw.url)
        error = page.wait_for_selector('.error[data-field="api_key"]', timeout=WAIT_MS)
        assert "401 unauthorized" in error.inner_text()
        assert page.is_visible("#key-form")
        page.fill("#api-key", KEY)
        page.click("#key-form button")
        page.wait_for_function("document.querySelector('#model-info').textContent.includes('frames')")
        assert page.locator(".error").count() == 0
        page.click("#load-sample")  # fetch sends the key as a header, the WebSocket as ?api_key=
        page.wait_for_function("document.querySelector('#session-info').textContent.includes('step_index 0')")
        page.keyboard.press("d")
        wait_frames(page, 1)
    finally:
        ctx.close()
    assert not offline.refused


def test_a_gamepad_drives_while_its_stick_is_held(browser: Browser, gw: Gateway) -> None:
    ctx, offline = new_context(browser, gw)
    # headless Chromium has no gamepads: this one is a plain object behind the Gamepad API's entry point
    ctx.add_init_script(
        "window.testPad = {id: 'test pad', connected: true, axes: [0, 0, 0, 0], buttons: [{pressed: false}]};"
        "navigator.getGamepads = () => [window.testPad];"
    )
    try:
        page = ctx.new_page()
        open_page(page, gw)
        page.wait_for_function("document.querySelector('#gamepad').textContent === 'gamepad: test pad'")
        page.click("#load-sample")
        page.wait_for_function("document.querySelector('#session-info').textContent.includes('step_index 0')")
        page.evaluate("testPad.axes[0] = 0.5")  # half right: one step after the other while held
        page.wait_for_function("document.querySelectorAll('#filmstrip img').length >= 2", timeout=WAIT_MS)
        page.evaluate("testPad.axes[0] = 0")
        wait_frames(page, 2)  # the step in flight at the release ends
        n = page.locator("#filmstrip img").count()
        page.wait_for_timeout(500)
        assert page.locator("#filmstrip img").count() == n  # released: no more steps
        assert page.evaluate("document.body.dataset.busy") == "false"
        rows = list(csv.reader(io.StringIO(download(page, "#download-csv").decode())))
        assert len(rows) == n and all([float(v) for v in row] == [0.5, 0, 0, -1] for row in rows)
    finally:
        ctx.close()
    assert not offline.refused


def test_demo_plays_eight_scripted_steps(page: Page, gw: Gateway, tmp_path: Path) -> None:
    open_page(page, gw, "?demo=1")
    page.wait_for_selector("body[data-demo=done]", timeout=WAIT_MS)
    frames = shown_frames(page)
    assert len(frames) == 8 and len(set(frames)) == 8
    assert page.locator("#reward-plot circle.point").count() == 8
    assert page.inner_text("#frame-index") == "t = 8 / 8"
    assert "reach-v3/ep00000.npz, frames 0–1" in page.inner_text("#context-source")
    assert page.locator(".error").count() == 0
    # at 1280x800 the three columns sit side by side: the frame, the drive controls and the plot in view
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    boxes = {p: page.locator(p).bounding_box() for p in ("#context-panel", "#viewer", "#drive-panel", "#reward-plot")}
    assert boxes["#context-panel"]["x"] < boxes["#viewer"]["x"] < boxes["#drive-panel"]["x"]
    assert all(b["x"] + b["width"] <= 1280 and b["y"] + b["height"] <= 800 for b in boxes.values()), boxes
    shot = page.screenshot(path=str(tmp_path / "playground.png"))
    assert Image.open(io.BytesIO(shot)).size == (1280, 800)
    if target := os.environ.get("PLAYGROUND_SCREENSHOT"):
        (REPO / target).write_bytes(shot)


def test_narrow_screen_has_everything_in_one_column(browser: Browser, gw: Gateway) -> None:
    ctx, offline = new_context(browser, gw)
    try:
        page = ctx.new_page()
        page.set_viewport_size({"width": 390, "height": 844})
        open_page(page, gw, "?demo=1")
        page.wait_for_selector("body[data-demo=done]", timeout=WAIT_MS)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing sticks out sideways
        for panel in ("#viewer", "#drive-panel", "#context-panel", "#imagine-panel"):
            box = page.locator(panel).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, panel
        frame = page.locator("#frame").bounding_box()
        assert frame is not None and frame["width"] >= 300  # the frame fills the width
    finally:
        ctx.close()
    assert not offline.refused


def test_docs_render_offline_from_the_gateways_own_files(page: Page, gw: Gateway) -> None:
    page.goto(f"{gw.url}/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=WAIT_MS)
    scripts = page.eval_on_selector_all("script[src]", "ss => ss.map(s => s.src)")
    styles = page.eval_on_selector_all("link[href]", "ls => ls.map(l => l.href)")
    assert scripts and all(s.startswith(f"{gw.url}/static/") for s in scripts + styles), scripts + styles
    operations = page.locator(".swagger-ui .opblock-summary-path").all_inner_texts()
    assert "/v1/sessions/{session_id}/step" in [o.replace("\u200b", "") for o in operations]
    assert page.locator(".swagger-ui .info .title").inner_text().startswith("iVideoGPT world model gateway")
