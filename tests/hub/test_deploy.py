"""`python -m train.deploy_space` against the fake Hub: which files arrive, the uploaded card, the pinned
weights repo, refusals before any request (issue 13)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hub_helpers import make_weights
from train.deploy_space import check_space_card, deploy, front_matter, main, space_files

ROOT = Path(__file__).resolve().parents[2]
SPACE = "lab/mnist-diffusion-lab"
KEY = f"spaces/{SPACE}"  # how the fake Hub keys a Space


def test_deploy_uploads_exactly_the_files_the_space_needs(hub):
    sha = deploy(SPACE, token="hf_fake_token", log=lambda *a: None)
    assert sha == hub.head(KEY) and hub.repos[KEY].sdk == "gradio"
    files = hub.files(KEY)
    expected = space_files(ROOT)
    assert set(files) == set(expected) | {".gitattributes"}
    # what a Space needs
    for path in ("app.py", "README.md", "LICENSE", "requirements.txt", "diffusion/hub.py", "diffusion/pipeline.py",
                 "ui/assets/mnist_test_sample.npz", "weights/pixel-cond/model.safetensors",
                 "weights/pixel-cond/config.json", "weights/classifier/model.safetensors"):
        assert path in files, path
    if (ROOT / "ui").is_dir():
        assert any(p.startswith("ui/") for p in files)
    # and nothing else: no tests, training scripts, benchmark grids, records or bytecode
    assert not [p for p in files if p.startswith(("tests/", "train/", "bench/results/grids/", "space/", "runs/"))
                or p.endswith(".pyc") or "__pycache__" in p]
    # the Space's requirements.txt is the CPU-torch list, byte for byte; binaries went through LFS
    assert files["requirements.txt"] == (ROOT / "space" / "requirements.txt").read_bytes()
    assert files["weights/pixel-cond/model.safetensors"] == (ROOT / "weights/pixel-cond/model.safetensors").read_bytes()
    modes = {u["path"]: u["mode"] for u in hub.uploads}
    assert {modes[p] for p in files if p.endswith(".safetensors")} == {"lfs"}
    # the uploaded card validates
    readme = files["README.md"].decode()
    assert check_space_card(readme, ROOT) == []
    assert front_matter(readme)["suggested_hardware"] == "cpu-basic"
    assert len(front_matter(readme)["short_description"]) <= 60
    assert hub.repos[KEY].variables == {}


def test_deploy_with_a_weights_repo_pins_it(hub, tmp_path):
    weights = make_weights(tmp_path / "w", ["pixel-cond"])
    from diffusion.hub import push_folder
    first = push_folder(weights / "pixel-cond", "lab/weights", token="hf_fake_token", record=False)
    hub.add_files("lab/weights", {"later.txt": b"main moved on"})
    head = hub.head("lab/weights")
    # a branch is resolved to the commit it points at now
    deploy(SPACE, weights_repo="lab/weights", revision="main", token="hf_fake_token", log=lambda *a: None)
    assert hub.repos[KEY].variables == {"HUB_REPO": "lab/weights", "HUB_REVISION": head}
    readme = hub.file(KEY, "README.md").decode()
    assert front_matter(readme)["models"] == ["lab/weights"] and check_space_card(readme, ROOT) == []
    assert readme.split("---", 2)[2] == (ROOT / "README.md").read_text(encoding="utf-8").split("---", 2)[2]
    # a commit is taken as given
    deploy(SPACE, weights_repo="lab/weights", revision=first, token="hf_fake_token", log=lambda *a: None)
    assert hub.repos[KEY].variables["HUB_REVISION"] == first


def test_redeploy_removes_files_no_longer_shipped(hub):
    hub.add_files(KEY, {"old_module.py": b"x", "tests/test_old.py": b"y"})
    hub.repos[KEY].sdk = "gradio"
    deploy(SPACE, token="hf_fake_token", log=lambda *a: None)
    files = hub.files(KEY)
    assert "old_module.py" not in files and "tests/test_old.py" not in files and "app.py" in files


def _mini_checkout(tmp_path: Path, readme: str) -> Path:
    root = tmp_path / "checkout"
    for name in ("LICENSE", ".gitattributes", "app.py", "space/requirements.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)
    (root / "README.md").write_text(readme, encoding="utf-8")
    return root


def test_a_card_the_hub_would_reject_is_refused_before_any_request(hub, tmp_path, capsys):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    long = readme.replace(front_matter(readme)["short_description"], "x" * 61, 1)
    root = _mini_checkout(tmp_path, long)
    with pytest.raises(ValueError, match="`short_description` is 61 characters; the Hub allows at most 60"):
        deploy(SPACE, root=root, token="hf_fake_token", log=lambda *a: None)
    assert hub.requests == [] and KEY not in hub.repos
    (root / "space" / "requirements.txt").unlink()
    with pytest.raises(FileNotFoundError, match="CPU-torch requirements"):
        deploy(SPACE, root=root, log=lambda *a: None)


def test_cli_dry_run_lists_and_uploads_nothing(hub, capsys):
    assert main([SPACE, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "requirements.txt" in out and "weights/pixel-cond/model.safetensors" in out and "dry run" in out
    assert hub.requests == []
    with pytest.raises(SystemExit):
        main([SPACE, "--revision", "abc"])  # --revision without --weights-repo
