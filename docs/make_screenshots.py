"""Screenshots of the app with the shipped weights, for the README: python docs/make_screenshots.py

Starts `python app.py` on a free port, drives Debian's Chromium with Playwright (Generate, then the
Pixel vs latent and Digit embeddings tabs) and writes docs/screenshot*.png."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(1)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#gen-run", timeout=60_000)
            page.click("#gen-run")
            page.wait_for_function("() => { const i = document.querySelector('#gen-anim img');"
                                   " return i && i.complete && i.naturalWidth > 0; }", timeout=120_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(ROOT / "docs" / "screenshot.png"), full_page=True)
            for tab, name in (("Pixel vs latent", "compare"), ("Digit embeddings", "embeddings")):
                page.get_by_role("tab", name=tab).click()
                page.wait_for_timeout(2500)
                page.screenshot(path=str(ROOT / "docs" / f"screenshot-{name}.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
