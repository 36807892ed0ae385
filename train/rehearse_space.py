"""Rehearse the Space on this machine: its exact files, a fresh environment, no network, a click in a browser.

    python -m train.rehearse_space [--workdir DIR] [--torch auto|index|host] [--wheelhouse DIR] [--keep]

1. `train.deploy_space.space_upload` (what a deploy uploads, after the same checks) is written into an empty
   folder: the app starts with no checkout beside it.
2. A fresh virtual environment gets the Space's requirements.txt plus `gradio==<sdk_version>` from the card (the
   Hub installs gradio from the front matter). torch: `index` installs the file as written (CPU torch from
   download.pytorch.org); `host` (where that index is unreachable) drops the CPU-index lines and links this
   interpreter's torch, same version, into the environment (the local torch wheel is the CUDA build, whose
   nvidia-* dependencies are gigabytes that are not on local disk); `auto` picks `index` when that host answers.
   Packages come from a wheelhouse (default ~/.cache/mnist-diffusion-lab/space-wheels): `pip install --no-index`
   from it first, and only what it lacks is fetched (`pip download`) once, so later rehearsals install offline.
3. app.py is started from that folder by the new environment's python, with HOME, caches and PYTHONPATH of its own
   and HF_HUB_OFFLINE=1, inside a network namespace with only loopback (`unshare -rn`, where the kernel allows it;
   else it says the network was not cut); Chromium (Playwright, /usr/bin/chromium) opens the page in the same
   namespace, clicks Generate and waits for the final image and the status line's NFE.

Exit status 0 when the digits appeared; the app's log and a screenshot are kept in the work folder.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from train.deploy_space import ROOT, front_matter, space_upload, write_space
from ui.server import free_port

CPU_INDEX_HOST = "download.pytorch.org"
WHEELHOUSE = Path.home() / ".cache" / "mnist-diffusion-lab" / "space-wheels"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
START_TIMEOUT_S = 240       # loading every model on a busy 2-core machine
GENERATE_TIMEOUT_S = 120


def log(msg: str) -> None:
    print(f"[rehearse {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


# ------------------------------------------------------------------ requirements


def space_requirements(space: Path, torch_from: str) -> tuple[list[str], str | None]:
    """(requirement lines to install, the torch pin when torch is linked from this interpreter instead).
    The Space's requirements.txt, plus gradio at the card's sdk_version."""
    lines, torch_pin = [], None
    for raw in (space / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if torch_from == "host" and line.startswith("--extra-index-url"):
            continue                                    # the CPU index: unreachable here
        if torch_from == "host" and line.replace(" ", "").startswith("torch=="):
            torch_pin = line.split("==", 1)[1].split("+", 1)[0]
            continue
        lines.append(line)
    sdk_version = front_matter((space / "README.md").read_text(encoding="utf-8")).get("sdk_version")
    if not sdk_version:
        raise ValueError("the Space card has no sdk_version: the Hub would not know which gradio to install")
    lines.append(f"gradio=={sdk_version}")
    return lines, torch_pin


def _is_native(name: str) -> bool:
    return name in ("torch", "triton") or name.startswith(("nvidia-", "cuda-"))


def host_torch(venv: Path, pin: str) -> list[str]:
    """Link this interpreter's torch and its native libraries (triton, nvidia-*, cuda-*) into `venv` through a .pth
    file; returns the pure-Python dependencies to install, pinned at this interpreter's versions."""
    from packaging.requirements import Requirement
    have = md.version("torch").split("+", 1)[0]
    if have != pin:
        raise ValueError(f"the Space pins torch {pin} but this interpreter has {have}: use --torch index")
    native, pure, todo = set(), {}, ["torch"]
    while todo:
        name = todo.pop()
        if name in native:
            continue
        native.add(name)
        for text in md.distribution(name).requires or []:
            req = Requirement(text)
            if req.marker and not req.marker.evaluate({"extra": ""}):
                continue
            dep = req.name.lower().replace("_", "-")
            if _is_native(dep):
                todo.append(dep)
            else:
                try:
                    pure[dep] = md.version(dep)
                except md.PackageNotFoundError:
                    pass
    links = venv / "host-torch"
    links.mkdir()
    for name in sorted(native):
        dist = md.distribution(name)
        for top in sorted({Path(f).parts[0] for f in dist.files or [] if Path(f).parts[0] != ".."}):
            if not (links / top).exists():
                (links / top).symlink_to(Path(dist.locate_file(top)).resolve())
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "host-torch.pth").write_text(f"{links.resolve()}\n")
    return [f"{name}=={version}" for name, version in sorted(pure.items())]


def install(venv: Path, requirements: list[str], wheelhouse: Path, workdir: Path) -> None:
    """pip install from the wheelhouse alone; what it lacks is downloaded into it once, then installed offline."""
    req_file = workdir / "rehearsal-requirements.txt"
    req_file.write_text("\n".join(requirements) + "\n")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    # --no-compile: byte-compiling every installed module (gradio's tree) is most of an offline install's time
    offline = pip + ["install", "--no-compile", "--no-index", "--find-links", str(wheelhouse), "-r", str(req_file)]
    wheelhouse.mkdir(parents=True, exist_ok=True)
    if subprocess.run(offline, capture_output=True, text=True).returncode == 0:
        log(f"installed from the wheelhouse {wheelhouse} (offline)")
        return
    log(f"filling the wheelhouse {wheelhouse} (pip download, once)")
    subprocess.run(pip + ["download", "-d", str(wheelhouse), "-r", str(req_file)], check=True)
    done = subprocess.run(offline, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip install failed:\n{done.stderr[-3000:]}")


# ------------------------------------------------------------------ run and click


def app_env(workdir: Path, port: int) -> dict:
    """An environment of its own: no PYTHONPATH, a fresh HOME and caches, the Hub offline, the app on `port`."""
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
           "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1", "MPLCONFIGDIR": str(home / "mpl"),
           "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "TMPDIR": str(workdir / "tmp")}
    (workdir / "tmp").mkdir(exist_ok=True)
    return env


def wait_for_page(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with status {proc.returncode} before serving the page")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"the app did not answer at {url} within {timeout:.0f} s")


def click_generate(url: str, screenshot: Path) -> str:
    """Open the page in Chromium, click Generate, wait for the final image; returns the page's status text."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("#gen-run", timeout=60_000)
            page.click("#gen-run")
            page.wait_for_function("() => { const i = document.querySelector('#gen-final img');"
                                   " return i && i.complete && i.naturalWidth > 0; }", timeout=GENERATE_TIMEOUT_S * 1000)
            page.wait_for_function("() => document.body.innerText.split('\\n').some(l => l.startsWith('Done') "
                                   "&& l.includes('NFE'))", timeout=30_000)
            page.screenshot(path=str(screenshot), full_page=True)
            return page.inner_text("body")
        finally:
            browser.close()


def serve_and_click(space: Path, venv: Path, workdir: Path) -> int:
    """Start app.py from `space` with `venv`'s python, click Generate, stop the app; 0 when the digits appeared."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    app_log = workdir / "app.log"
    with open(app_log, "w") as out:
        proc = subprocess.Popen([str(venv / "bin" / "python"), "app.py"], cwd=space, env=app_env(workdir, port),
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            started = time.monotonic()
            wait_for_page(url, proc, START_TIMEOUT_S)
            log(f"the app answered at {url} after {time.monotonic() - started:.1f} s")
            clicked = time.monotonic()
            text = click_generate(url, workdir / "rehearsal.png")
            log(f"Generate: the final image appeared after {time.monotonic() - clicked:.1f} s")
            status = next((line for line in text.splitlines() if line.startswith("Done")), "")
            log(f"status: {status.strip()[:200]}")
            return 0
        except Exception as e:  # noqa: BLE001 - the rehearsal reports, with the app's own log
            log(f"FAILED: {type(e).__name__}: {e}")
            print(app_log.read_text()[-4000:], flush=True)
            return 1
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def can_cut_network() -> bool:
    """Whether `unshare -rn` works here (a user and network namespace: only loopback inside)."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


# ------------------------------------------------------------------ the whole rehearsal


def rehearse(workdir: Path, torch_from: str = "auto", wheelhouse: Path = WHEELHOUSE, root: Path = ROOT) -> int:
    """Build, install, run and click (module docstring); 0 on success."""
    t0 = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    space, venv = workdir / "space", workdir / "venv"
    files = write_space(space, space_upload(root))
    log(f"{len(list(space.rglob('*')))} entries written to {space} (the deploy's upload set)")
    if torch_from == "auto":
        torch_from = "index" if reachable(CPU_INDEX_HOST) else "host"
        log(f"torch: {torch_from} ({CPU_INDEX_HOST} {'answers' if torch_from == 'index' else 'is unreachable'})")
    requirements, torch_pin = space_requirements(space, torch_from)
    wanted = str(front_matter((space / "README.md").read_text(encoding="utf-8")).get("python_version") or "")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if wanted and wanted != here:
        log(f"WARNING: the Space runs Python {wanted}; this rehearsal runs {here}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if torch_pin:
        requirements += host_torch(venv, torch_pin)
        log(f"torch {torch_pin}: linked from this interpreter")
    t_install = time.monotonic()
    install(venv, requirements, wheelhouse, workdir)
    log(f"fresh environment ready in {time.monotonic() - t_install:.1f} s")
    del files
    if can_cut_network():
        cmd = ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, "-m",
               "train.rehearse_space", "--serve-only", str(workdir)]
        log("network cut: the app and the browser run in a namespace with only loopback")
        rc = subprocess.run(cmd, cwd=str(Path(__file__).resolve().parent.parent)).returncode
    else:
        log("WARNING: unshare -rn is not available here: the network was NOT cut (HF_HUB_OFFLINE=1 only)")
        rc = serve_and_click(space, venv, workdir)
    log(f"{'passed' if rc == 0 else 'FAILED'} in {time.monotonic() - t0:.1f} s (work folder {workdir})")
    return rc


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.rehearse_space", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--workdir", default=None, help="an empty or new folder for the Space, the venv and the logs "
                                                   "(default: a temporary folder)")
    p.add_argument("--torch", choices=("auto", "index", "host"), default="auto", help="where torch comes from")
    p.add_argument("--wheelhouse", default=str(WHEELHOUSE), help="wheels kept between rehearsals")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    p.add_argument("--serve-only", metavar="WORKDIR", help=argparse.SUPPRESS)   # step 3, inside the namespace
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.serve_only:
        work = Path(args.serve_only)
        return serve_and_click(work / "space", work / "venv", work)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="space-rehearsal-"))
    try:
        return rehearse(workdir, args.torch, Path(args.wheelhouse))
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
