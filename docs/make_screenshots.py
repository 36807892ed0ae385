"""Refresh every screenshot under docs/ from the running app:  python docs/make_screenshots.py [--only NAME ...]

Starts `python app.py` with the shipped weights (weights/, never the Hub) on 127.0.0.1 and a free port, drives
Debian's Chromium through Playwright, and for each shot opens its tab, presses its button if it has one, and waits
for real conditions, never for a fixed time: the words a finished run prints in its status line, then every image
in the visible tab decoded (`img.complete && img.naturalWidth > 0`) and the page's progress indicators gone.

    docs/screenshot.png              the whole page after a Generate run (the README's picture; every tab's name
                                     visible in the tab bar, hence the wide viewport)
    docs/screenshots/<name>.png      one tab's panel, after its run (SHOTS below)

The real run takes a few minutes on a 2-core CPU and is not a test; tests/test_docs.py checks the shot list against
the app's tabs and the argument parsing.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT))

from ui.server import free_port  # noqa: E402
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@dataclass(frozen=True)
class Shot:
    """One picture: open `tabs` in order (a tab group's name first, when tabs are grouped), press each button of
    `clicks`, wait until each (elem_id, words) in `texts` shows the words, then for every image of the tab to be
    decoded."""
    name: str
    tabs: tuple[str, ...]
    clicks: tuple[str, ...] = ()
    texts: tuple[tuple[str, str], ...] = ()
    whole_page: bool = False

    @property
    def path(self) -> Path:
        """Where the picture goes, relative to docs/."""
        return Path("screenshot.png") if self.whole_page else Path("screenshots") / f"{self.name}.png"


# The tab titles are those of ui/tab_*.py (`title`), each after its group's name (TAB_GROUPS in ui/__init__.py), in
# the page's order; tests/test_docs.py checks that every tab has a shot here.
MAKE, WATCH, INSIDE, EXPERIMENT, BACKGROUND = ("1 · Make digits", "2 · Watch the process", "3 · Look inside",
                                               "4 · Experiment", "5 · Background")
SHOTS = (
    Shot("app", (MAKE, "Generate"), clicks=("#gen-run",), texts=(("status-line", "Done"),), whole_page=True),
    Shot("live", (MAKE, "Live"), texts=(("live-status", "NFE"),)),
    Shot("compare", (MAKE, "Pixel vs latent"), clicks=("#cmp-run",), texts=(("cmp-table", "done"),)),
    Shot("forward", (WATCH, "Forward diffusion"), texts=(("fwd-status", "test image #"),)),
    Shot("score_field", (WATCH, "Score field (2-D, exact)"), clicks=("#sf-run",), texts=(("sf-pstatus", "Done"),)),
    Shot("timelapse", (WATCH, "Training time-lapse"), texts=(("tl-status", ""),)),
    Shot("embeddings", (WATCH, "Digit embeddings"), clicks=("#emb-run",)),
    Shot("which_digit", (INSIDE, "Which digit?"), clicks=("#wd-run",), texts=(("wd-status", "network evaluations in"),)),
    Shot("likelihood", (INSIDE, "How likely?"), clicks=("#lk-run",), texts=(("lk-status", "evaluations in"),)),
    Shot("inside", (INSIDE, "Inside the network"), clicks=("#in-run", "#in-loss-run"),
         texts=(("in-status", "network evaluation in"), ("in-loss-status", "network evaluations in"))),
    Shot("race", (EXPERIMENT, "Sampler race"), clicks=("#race-run",), texts=(("race-table", "Fréchet"),)),
    Shot("draw_and_denoise", (EXPERIMENT, "Draw and denoise"), clicks=("#sde-run",), texts=(("sde-status", "Done"),)),
    Shot("about", (BACKGROUND, "About")),
)

# every <img> in the visible tab panels decoded, and no output of theirs still marked busy (gradio's status tracker
# puts .generating on a streaming output and a .progress-text timer / .eta-bar on a pending one), in STABLE_POLLS
# polls in a row: a tab that fires a second event after its first one drew is caught still working. gradio's images
# load lazily, and one below the fold never would: each is switched to eager loading first.
STABLE_POLLS, POLL_MS = 4, 250
IMAGES_READY = """polls => {
  const shown = e => e.offsetParent !== null;
  const panels = [...document.querySelectorAll('[role=tabpanel]')].filter(shown);
  const imgs = panels.flatMap(p => [...p.querySelectorAll('img')]).filter(shown);
  imgs.filter(i => i.loading === 'lazy').forEach(i => { i.loading = 'eager'; });
  const busy = panels.flatMap(p => [...p.querySelectorAll('.generating, .eta-bar, .progress-text')]).filter(shown);
  const ready = busy.length === 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
  window.__shotReady = ready ? (window.__shotReady || 0) + 1 : 0;
  return window.__shotReady >= polls;
}"""
MARGIN = 16      # CSS pixels of page around a tab panel's picture
# the innermost visible tab panel, in page coordinates (scroll added), with the margin, inside the page
PANEL_CLIP = """margin => {
  const panel = [...document.querySelectorAll('[role=tabpanel]')].filter(p => p.offsetParent !== null).pop();
  const r = panel.getBoundingClientRect(), page = document.documentElement;
  const x = Math.max(0, r.left + scrollX - margin), y = Math.max(0, r.top + scrollY - margin);
  return {x, y, width: Math.min(page.scrollWidth - x, r.width + 2 * margin),
          height: Math.min(page.scrollHeight - y, r.height + 2 * margin)};
}"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python docs/make_screenshots.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=[s.name for s in SHOTS], metavar="NAME",
                   help=f"take only these shots (default: all of {', '.join(s.name for s in SHOTS)})")
    p.add_argument("--out-dir", type=Path, default=DOCS, help="where the pictures go (default docs/)")
    p.add_argument("--width", type=int, default=1680, help="viewport width in CSS pixels (wide enough for the tab bar)")
    p.add_argument("--height", type=int, default=1000, help="viewport height in CSS pixels")
    p.add_argument("--full-colour", action="store_true",
                   help="keep the browser's 24-bit PNGs (default: 256-colour palettes, about 1/3 of the bytes)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for the server to start, and for each shot's run")
    args = p.parse_args(argv)
    if args.width < 800 or args.height < 400:
        p.error(f"--width/--height must be at least 800 x 400 (got {args.width} x {args.height})")
    if args.timeout <= 0:
        p.error(f"--timeout must be positive (got {args.timeout})")
    return args


def selected(only) -> list[Shot]:
    """The shots to take, in SHOTS order (the app's own tab order)."""
    return [s for s in SHOTS if not only or s.name in only]


def to_palette(path: Path) -> None:
    """Rewrite a screenshot as a 256-colour palette PNG (median cut, no dithering): flat UI colours and the
    pictures' few grey levels survive unchanged to the eye, at about a third of the bytes in git."""
    from PIL import Image
    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    palette.save(path, optimize=True)


def wait_for_server(url: str, server: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll `url` until it answers; a server that exits first raises with the end of its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the app exited with code {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)        # polling a socket, not waiting on a picture
    raise TimeoutError(f"the app did not answer at {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


# true when no visible tab bar hides tabs in its overflow menu ("…"; gradio adds .hide to an unused one)
TABS_FIT = """() => [...document.querySelectorAll('.overflow-menu')]
  .filter(m => m.offsetParent !== null).every(m => m.classList.contains('hide'))"""
WIDTH_STEP, MAX_WIDTH = 160, 2880


def fit_tab_bar(page, width: int, height: int) -> int:
    """Widen the viewport (up to MAX_WIDTH) until every tab's name shows in the tab bar; returns the width used."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    while True:
        try:
            page.wait_for_function(TABS_FIT, timeout=3000)      # the tab bar re-measures itself after a resize
            return width
        except PlaywrightTimeout:
            if width >= MAX_WIDTH:
                print(f"warning: some tabs stay in the overflow menu even at {width} px", flush=True)
                return width
            width = min(MAX_WIDTH, width + WIDTH_STEP)
            page.set_viewport_size({"width": width, "height": height})


def open_tab(page, name: str) -> None:
    """Click the tab called `name`, from the tab bar or, where the bar is too narrow for it, its overflow menu."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    try:
        page.get_by_role("tab", name=name, exact=True).click(timeout=5000)
    except PlaywrightTimeout:            # present but hidden: the bar shows it in its "More tabs" menu
        page.locator(".overflow-menu:not(.hide) button").first.click()
        page.locator(".overflow-dropdown:not(.hide)").get_by_text(name, exact=True).click()


def take(page, shot: Shot, out_dir: Path, timeout_ms: float) -> Path:
    """Open the shot's tab, run it, wait until it has finished drawing, and save the picture."""
    for tab in shot.tabs:
        open_tab(page, tab)
    for button in shot.clicks:
        page.click(button)
    for elem_id, words in shot.texts:
        page.wait_for_function("([id, words]) => { const e = document.getElementById(id);"
                               " const t = e ? e.innerText.trim() : '';"
                               " return t.length > 0 && t.includes(words); }",
                               arg=[elem_id, words], timeout=timeout_ms)
    page.evaluate("() => { window.__shotReady = 0; }")
    page.wait_for_function(IMAGES_READY, arg=STABLE_POLLS, polling=POLL_MS, timeout=timeout_ms)
    path = out_dir / shot.path
    path.parent.mkdir(parents=True, exist_ok=True)
    if shot.whole_page:
        page.screenshot(path=str(path), full_page=True)
    else:
        page.screenshot(path=str(path), full_page=True, clip=page.evaluate(PANEL_CLIP, MARGIN))
    return path


def main(argv=None) -> None:
    args = parse_args(argv)
    from playwright.sync_api import sync_playwright     # here, so that importing this module stays cheap

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("HUB_REPO", "HUB_REVISION")}
    env |= {"GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "app.log"
        with log.open("w") as log_file:
            server = subprocess.Popen([sys.executable, "app.py", "--weights-dir", str(ROOT / "weights")], cwd=ROOT,
                                      env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            wait_for_server(url, server, log, args.timeout)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": args.width, "height": args.height})
                page.goto(url, wait_until="domcontentloaded")
                page.wait_for_selector("#gen-run", timeout=args.timeout * 1000)
                for shot in selected(args.only):
                    started = time.monotonic()
                    width = fit_tab_bar(page, args.width, args.height) if shot.whole_page else args.width
                    path = take(page, shot, args.out_dir, args.timeout * 1000)
                    if not args.full_colour:
                        to_palette(path)
                    page.set_viewport_size({"width": args.width, "height": args.height})
                    print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"
                          f"  ({width} px wide, {time.monotonic() - started:.1f} s)", flush=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
