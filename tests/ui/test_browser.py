"""Drive the app in a real Chromium (Playwright): generate, see the images appear, and keep screenshots
under artifacts/ for a person to look at. Skipped when /usr/bin/chromium is missing."""
from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.is_file(), reason="no /usr/bin/chromium (apt-get install chromium)")]


@pytest.fixture(scope="module")
def page(app_url):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url, wait_until="domcontentloaded")
            page.wait_for_selector("#gen-run", timeout=60_000)
            yield page
        finally:
            browser.close()


LIVE_IMG = "#live-grid img"


def open_tab(page, title: str) -> None:
    """Click a tab by its title, its group's tab first (the tabs are grouped into a path: ui.TAB_GROUPS)."""
    from ui import TAB_GROUPS

    group = next(g for g, members in TAB_GROUPS if any(cls.title == title for cls in members))
    page.get_by_role("tab", name=group, exact=True).click()
    page.get_by_role("tab", name=title, exact=True).click()


def _natural_width(page, selector: str) -> int:
    return page.eval_on_selector(selector, "img => img.complete ? img.naturalWidth : 0")


def _shown_width(page, selector: str) -> float:
    """CSS px the picture itself takes on the page (object-fit letterboxes it inside the <img> box)."""
    return page.eval_on_selector(selector, "img => img.complete && img.naturalWidth ? Math.min(img.clientWidth / "
                                 "img.naturalWidth, img.clientHeight / img.naturalHeight) * img.naturalWidth : 0")


def _sent_small_and_shown_large(page, selector: str) -> None:
    """A grid sent at ~SENT_PX (ui/pictures.py) and shown upscaled, crisp (ui/style.css: .upscaled, .pixelated)."""
    assert 200 <= _natural_width(page, selector) <= 240
    assert _shown_width(page, selector) >= 400
    assert page.eval_on_selector(selector, "img => getComputedStyle(img).imageRendering") == "pixelated"


def test_generate_in_the_browser(page):
    ARTIFACTS.mkdir(exist_ok=True)
    page.click("#gen-run")
    page.wait_for_selector("#gen-final img", timeout=60_000)
    page.wait_for_function("() => { const i = document.querySelector('#gen-final img');"
                           " return i && i.complete && i.naturalWidth > 0; }", timeout=30_000)
    for selector in ("#gen-final img", "#gen-xt img", "#gen-x0 img"):
        _sent_small_and_shown_large(page, selector)
    page.wait_for_selector("#gen-gif a, #gen-gif .file-name, #gen-gif td", timeout=30_000)
    page.wait_for_function("() => { const i = document.querySelector('#gen-anim img');"
                           " return i && i.complete && i.naturalWidth > 0 && i.src.endsWith('.gif'); }", timeout=30_000)
    body = page.inner_text("body")
    assert "NFE" in body and "wall time" in body and "seed 0" in body
    page.screenshot(path=str(ARTIFACTS / "app_generate.png"), full_page=True)


def test_a_generate_preset_in_the_browser(page):
    """A preset click sets the controls (the cost line follows them) and shows its pictures, computed on this first
    click by the Generate button's handler and cached (ui/presets.py)."""
    ARTIFACTS.mkdir(exist_ok=True)
    open_tab(page, "Generate")
    page.locator("#generate-presets").get_by_text("one step", exact=False).click()
    page.wait_for_function("() => { const s = document.querySelector('#status-line');"
                           " return s && s.innerText.includes('digit 5') && s.innerText.includes('1 steps')"
                           " && s.innerText.includes('Done'); }", timeout=60_000)
    page.wait_for_function("() => { const i = document.querySelector('#gen-final img');"
                           " return i && i.complete && i.naturalWidth > 0; }", timeout=30_000)
    _sent_small_and_shown_large(page, "#gen-final img")
    body = page.inner_text("body")
    assert "Cost: 1 steps × 1 = 1 network evaluations" in body          # the estimate saw the preset's steps
    page.screenshot(path=str(ARTIFACTS / "app_generate_preset.png"), full_page=True)


@pytest.mark.parametrize("tab", ["Pixel vs latent", "Digit embeddings", "Forward diffusion", "About"])
def test_other_tabs_render(page, tab):
    open_tab(page, tab)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(ARTIFACTS / f"app_{tab.lower().replace(' ', '_')}.png"), full_page=True)
    assert page.get_by_role("tab", name=tab, exact=True).get_attribute("aria-selected") == "true"
    assert page.locator('[data-testid="toast-body"]').count() == 0, page.inner_text("body")[:300]  # no error popped


def test_compare_in_the_browser(page):
    open_tab(page, "Pixel vs latent")
    page.click("#cmp-run")
    page.wait_for_function("() => (document.querySelector('#cmp-table') || {}).innerText?.includes('done')",
                           timeout=60_000)
    assert "autoencoder decoding" in page.inner_text("#cmp-table")
    page.wait_for_timeout(500)
    for selector in ("#cmp-pix-xt img", "#cmp-lat-x0 img"):       # sent small, upscaled into their narrower boxes
        assert 200 <= _natural_width(page, selector) <= 240
        assert _shown_width(page, selector) > 1.2 * _natural_width(page, selector)
    page.screenshot(path=str(ARTIFACTS / "app_pixel_vs_latent_run.png"), full_page=True)


def test_interpolation_in_the_browser(page):
    open_tab(page, "Digit embeddings")
    page.click("#emb-run")
    page.wait_for_function("() => { const i = document.querySelector('#emb-strip img');"
                           " return i && i.complete && i.naturalWidth > 0; }", timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "app_digit_embeddings_run.png"), full_page=True)


def test_forward_pick_and_draw(page):
    open_tab(page, "Forward diffusion")
    page.wait_for_selector("#fwd-grid img", timeout=30_000)
    page.wait_for_function("() => (document.querySelector('#fwd-status') || {}).innerText?.includes('test image #')",
                           timeout=30_000)
    box = page.eval_on_selector("#fwd-grid img", "i => { const r = i.getBoundingClientRect();"
                                " return {x: r.x, y: r.y, w: r.width, h: r.height, nw: i.naturalWidth}; }")
    # the grid is 10 x 10 digits shown with object-fit: contain; click row 7, column 2 -> image #72
    s = min(box["w"], box["h"]) / box["nw"]
    left = box["x"] + (box["w"] - box["nw"] * s) / 2
    top = box["y"] + (box["h"] - box["nw"] * s) / 2
    cell = box["nw"] * s / 10
    page.mouse.click(left + 2.5 * cell, top + 7.5 * cell)
    page.wait_for_function("() => document.querySelector('#fwd-status').innerText.includes('test image #72')",
                           timeout=30_000)
    canvas = page.locator("#fwd-sketch canvas").first
    b = canvas.bounding_box()
    page.mouse.move(b["x"] + b["width"] * 0.5, b["y"] + b["height"] * 0.2)
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(b["x"] + b["width"] * 0.5, b["y"] + b["height"] * (0.2 + 0.06 * k), steps=2)
    page.mouse.up()
    page.wait_for_function("() => document.querySelector('#fwd-status').innerText.includes('your drawing')",
                           timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "app_forward_diffusion_drawn.png"), full_page=True)


def _live_image(page) -> tuple[str, bytes]:
    """The Live grid's src and the PNG bytes it points at, once it has loaded."""
    page.wait_for_function(f"() => {{ const i = document.querySelector('{LIVE_IMG}');"
                           " return i && i.complete && i.naturalWidth > 0; }", timeout=120_000)
    src = page.get_attribute(LIVE_IMG, "src")
    return src, page.request.get(src).body()


def test_live_redraws_while_the_guidance_slider_is_dragged(page):
    """Opening Live draws a grid (no button); dragging the guidance slider draws it again, for the new w."""
    open_tab(page, "Live")
    page.wait_for_function("() => (document.querySelector('#live-status') || {}).innerText?.includes('NFE')",
                           timeout=120_000)
    from diffusion.registry import defaults_for
    default = defaults_for("pixel-cond-distilled").guidance           # Live opens at its 4-step student's own w
    assert f"guidance w = {default:g} " in page.inner_text("#live-status")
    before_src, before = _live_image(page)
    _sent_small_and_shown_large(page, LIVE_IMG)
    track = page.locator("#live-guidance input[type=range]").bounding_box()
    y = track["y"] + track["height"] / 2
    page.mouse.move(track["x"] + track["width"] * 0.5, y)            # w = 2 on [0, 4]: pressing there sets it
    page.mouse.down()
    page.mouse.move(track["x"] + track["width"] * 0.2, y, steps=8)    # drag left, through several values
    page.mouse.up()
    w = float(page.input_value("#live-guidance input[type=number]"))
    assert w < min(1.5, default), w
    page.wait_for_function("() => { const t = document.querySelector('#live-status').innerText;"
                           f" return t.includes('guidance w = {w:g} ') && t.includes('NFE'); }}", timeout=120_000)
    page.wait_for_function(f"() => document.querySelector('{LIVE_IMG}').src !== {before_src!r}", timeout=30_000)
    after_src, after = _live_image(page)
    assert after_src != before_src and after != before               # a new picture, not the same file again
    assert page.locator('[data-testid="toast-body"]').count() == 0, page.inner_text("body")[:300]
    page.screenshot(path=str(ARTIFACTS / "app_live.png"), full_page=True)


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / f"app_{name}.png"), full_page=True)


def _image_ready(page, elem_id: str, timeout: int = 60_000) -> None:
    page.wait_for_function(f"() => {{ const i = document.querySelector('#{elem_id} img');"
                           " return i && i.complete && i.naturalWidth > 0; }", timeout=timeout)


def test_score_field_in_the_browser(page):
    open_tab(page, "Score field (2-D, exact)")
    _image_ready(page, "sf-field")
    page.click("#sf-run")
    page.wait_for_function("() => (document.querySelector('#sf-pstatus') || {}).innerText?.includes('Done')",
                           timeout=120_000)
    _image_ready(page, "sf-particles")
    _shot(page, "score_field")


def test_timelapse_in_the_browser(page):
    open_tab(page, "Training time-lapse")
    page.wait_for_function("() => (document.querySelector('#tl-status') || {}).innerText?.length > 0",
                           timeout=30_000)
    assert "time-lapse" in page.inner_text("#tl-status") or "checkpoint" in page.inner_text("#tl-status")
    _shot(page, "training_time_lapse")


def test_sampler_race_in_the_browser(page):
    open_tab(page, "Sampler race")
    page.click("#race-run")
    page.wait_for_function("() => (document.querySelector('#race-table') || {}).innerText?.includes('Fréchet')",
                           timeout=120_000)
    _image_ready(page, "race-board")
    _shot(page, "sampler_race")


def test_draw_and_denoise_in_the_browser(page):
    open_tab(page, "Draw and denoise")
    page.click("#sde-run")
    page.wait_for_function("() => (document.querySelector('#sde-status') || {}).innerText?.includes('Done')",
                           timeout=120_000)
    _image_ready(page, "sde-strip")
    _shot(page, "draw_and_denoise")


def test_which_digit_in_the_browser(page):
    open_tab(page, "Which digit?")
    page.click("#wd-run")
    page.wait_for_function("() => (document.querySelector('#wd-status') || {}).innerText?.includes('network evaluations')",
                           timeout=120_000)
    _image_ready(page, "wd-input")
    _image_ready(page, "wd-plot")
    assert "p = " in page.inner_text("#wd-status")
    _shot(page, "which_digit")


def test_how_likely_in_the_browser(page):
    open_tab(page, "How likely?")
    page.locator("#lk-run").scroll_into_view_if_needed()
    page.click("#lk-run")
    page.wait_for_function("() => (document.querySelector('#lk-status') || {}).innerText?.includes('bits/dim')",
                           timeout=180_000)
    _image_ready(page, "lk-strip")
    _image_ready(page, "lk-plot")
    _shot(page, "how_likely")


def test_inside_the_network_in_the_browser(page):
    open_tab(page, "Inside the network")
    page.click("#in-run")
    page.wait_for_function("() => (document.querySelector('#in-status') || {}).innerText?.includes('network evaluation')",
                           timeout=120_000)
    for elem_id in ("in-outputs", "in-time", "in-features", "in-labels"):
        _image_ready(page, elem_id)
    page.click("#in-loss-run")
    page.wait_for_function("() => (document.querySelector('#in-loss-status') || {}).innerText?.includes('DSM loss')",
                           timeout=120_000)
    _image_ready(page, "in-loss")
    _shot(page, "inside_the_network")
