"""Do the runtime requirements' lower bounds hold? Install every one at its floor and run tests against them.

    python -m train.check_floors [--tests tests/hub/test_hub.py ...] [--at NAME==VERSION ...] [--workdir DIR] [--keep]

requirements.txt says `gradio>=6.24`, `huggingface_hub>=1.0`, ...: a promise that the app works on those versions.
This script keeps it honest (CI's slow tier or a scheduled job, not by hand): a fresh virtual environment gets each
runtime requirement pinned at its lower bound (`name==floor`), pytest, and torch linked from this interpreter (as
in train/rehearse_space.py: torch's own floor is not on local disk here, so torch is the one requirement not
checked at its floor); then the chosen tests run in it against this checkout's code. Wheels come from the same
wheelhouse as the Space rehearsal (downloaded once). Exit status: pytest's (1 also when the floors cannot even be
installed together: pip's message then says which floor is too low; --at NAME==VERSION tries a raised floor).
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train.rehearse_space import WHEELHOUSE, host_torch, install, log

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TESTS = ("tests/hub/test_hub.py", "tests/hub/test_deploy.py", "tests/ui/test_app.py")


def floors(requirements: Path = ROOT / "requirements.txt") -> tuple[list[str], str | None]:
    """(['name==floor', ...] for every requirement with a lower bound, torch's floor) from a requirements file."""
    from packaging.requirements import Requirement
    pins, torch_floor = [], None
    for raw in requirements.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        lows = [s.version for s in req.specifier if s.operator in (">=", "==", "~=")]
        if not lows:
            raise ValueError(f"{requirements.name}: {line!r} has no lower bound to check")
        if req.name.lower() == "torch":
            torch_floor = lows[0]
            continue
        pins.append(f"{req.name}=={lows[0]}")
    return pins, torch_floor


def check_floors(workdir: Path, tests=DEFAULT_TESTS, wheelhouse: Path = WHEELHOUSE, at=()) -> int:
    """`at`: 'name==version' pins that replace a floor (to try the floor a requirement should have)."""
    t0 = time.monotonic()
    pins, torch_floor = floors()
    raised = {a.split("==")[0].lower().replace("_", "-"): a for a in at}
    pins = [raised.pop(p.split("==")[0].lower().replace("_", "-"), p) for p in pins]
    if raised:
        raise ValueError(f"--at names no requirement of requirements.txt: {sorted(raised)}")
    venv = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    have = md.version("torch").split("+", 1)[0]
    extra = host_torch(venv, have)
    log(f"floors: {', '.join(pins)}; torch {have} linked from this interpreter (its floor {torch_floor} not checked)")
    try:
        install(venv, pins + extra + [f"pytest=={md.version('pytest')}"], wheelhouse, workdir)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        log(f"the floors cannot be installed together: {e}")
        return 1
    cmd = [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
           "not slow and not browser", *tests]
    log(f"running {' '.join(cmd[3:])}")
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    log(f"{'the floors hold' if rc == 0 else 'FAILED at the floors'} for {', '.join(tests)} "
        f"({time.monotonic() - t0:.0f} s)")
    return rc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.check_floors", description=__doc__.split("\n\n")[0])
    p.add_argument("--tests", nargs="+", default=list(DEFAULT_TESTS), help="test files to run at the floors")
    p.add_argument("--workdir", default=None, help="a new folder for the venv (default: a temporary one)")
    p.add_argument("--wheelhouse", default=str(WHEELHOUSE), help="wheels kept between runs")
    p.add_argument("--at", nargs="*", default=[], metavar="NAME==VERSION", help="replace a floor by this version")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="floors-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return check_floors(workdir, args.tests, Path(args.wheelhouse), args.at)
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
