"""An installed copy starts with models from any folder (issue 23): the wheel carries the weights as data files,
and a fresh environment outside the checkout loads every sampleable model from them."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _shipped() -> list[str]:
    return sorted(p.name for p in (ROOT / "weights").iterdir() if (p / "config.json").is_file())


@pytest.mark.slow
def test_an_installed_wheel_finds_its_weights_from_any_folder(tmp_path):
    """`pip wheel .`, installed (no dependencies: they come from this environment) into a fresh venv, then used from
    an empty folder: the weights default is the installed copy and every diffusion model loads from it."""
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                            "-w", str(wheels)], capture_output=True, text=True, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(wheels.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    data = [n for n in names if ".data/data/share/mnist-diffusion-lab/weights/" in n]
    for name in _shipped():
        for f in ("config.json", "model.safetensors", "README.md"):
            assert any(n.endswith(f"/weights/{name}/{f}") for n in data), (name, f)
    assert wheel.stat().st_size < 60e6, "the weights make the wheel tens of MB, not more"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import json, diffusion, diffusion.hub as hub\n"
        "from diffusion.locations import weights_origin\n"
        "pipes, messages = hub.load_pipelines()\n"
        "print(json.dumps({'module': diffusion.__file__, 'weights': str(hub.DEFAULT_WEIGHTS_DIR),\n"
        "                  'origin': weights_origin(hub.DEFAULT_WEIGHTS_DIR), 'loaded': sorted(pipes),\n"
        "                  'messages': messages}))\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([str(venv / "bin" / "python"), "-c", probe], cwd=elsewhere, capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["module"].startswith(str(venv)), "the installed copy, not this checkout, was imported"
    assert got["weights"] == str(venv / "share" / "mnist-diffusion-lab" / "weights")
    assert got["origin"] == "the installed package"
    assert got["loaded"] == sorted(["pixel-uncond", "pixel-cond", "latent-cond"]), got["messages"]
    # the app's console script names the same default in its help
    usage = subprocess.run([str(venv / "bin" / "mnist-diffusion-lab"), "--help"], cwd=elsewhere, capture_output=True,
                           text=True, env=env, timeout=120).stdout
    assert "share/mnist-diffusion-lab/weights" in usage.replace("\n", "").replace(" ", "")
