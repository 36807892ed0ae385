"""`python -m train.deploy_space` against the fake Hub: which files arrive, the uploaded card, the pinned
weights repo, refusals before any request (issue 13)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hub_helpers import make_weights
from train.deploy_space import (check_space_card, dead_links, deploy, front_matter, main, readme_links,
                                rewrite_links, space_files, space_readme, space_upload)

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
    local = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.split("---", 2)[2] == space_readme(local, None, hub.files(KEY), ROOT).split("---", 2)[2]
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


# ------------------------------------------------------------------ links and identity (issue 23)


def test_every_relative_link_of_the_uploaded_readme_resolves(hub):
    """Pages and pictures the README links to are uploaded; other links go to the source or become plain text."""
    deploy(SPACE, token="hf_fake_token", log=lambda *a: None)
    files = hub.files(KEY)
    readme = files["README.md"].decode()
    assert readme_links(readme) and dead_links(readme, files) == []
    local = readme_links((ROOT / "README.md").read_text(encoding="utf-8"))
    uploaded_docs = [p for p in local if p.endswith((".md", ".png")) and (ROOT / p).is_file()]
    assert uploaded_docs and set(uploaded_docs) <= set(files)


def test_links_are_kept_rewritten_to_the_source_or_unlinked(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# page\n")
    (tmp_path / "train").mkdir()
    text = ("See [the page](docs/page.md#top), [the trainer](train/loop.py), [the folder](train/), "
            "![shot](docs/missing.png), [web](https://example.org/x.md), [anchor](#quick-start).")
    uploaded = {"docs/page.md"}
    source = "https://github.com/someone/mnist-diffusion-lab.git"
    out = rewrite_links(text, uploaded, tmp_path, source)
    assert "[the page](docs/page.md#top)" in out
    assert "[the trainer](https://github.com/someone/mnist-diffusion-lab/blob/HEAD/train/loop.py)" in out
    assert "[the folder](https://github.com/someone/mnist-diffusion-lab/tree/HEAD/train)" in out
    assert "![shot](https://github.com/someone/mnist-diffusion-lab/blob/HEAD/docs/missing.png)" in out
    assert "[web](https://example.org/x.md)" in out and "[anchor](#quick-start)" in out
    bare = rewrite_links(text, uploaded, tmp_path, None)
    assert "See [the page](docs/page.md#top), the trainer, the folder, , [web](https://example.org/x.md)" in bare
    assert dead_links(out, uploaded) == [] and dead_links(bare, uploaded) == []
    assert dead_links(text, uploaded) == ["docs/missing.png", "train", "train/loop.py"]


def test_the_uploaded_card_names_the_weights_repo_only_when_configured():
    files = space_upload(ROOT)
    assert "models" not in front_matter(files["README.md"].decode())
    files = space_upload(ROOT, weights_repo="someone/weights")
    assert front_matter(files["README.md"].decode())["models"] == ["someone/weights"]


def test_streamlit_is_no_longer_a_space_sdk():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    bad = readme.replace("sdk: gradio", "sdk: streamlit", 1)
    assert any("`sdk: streamlit` is not one of ['docker', 'gradio', 'static']" in p for p in check_space_card(bad, ROOT))


def test_the_space_id_comes_from_the_identity(hub, monkeypatch, capsys):
    monkeypatch.setenv("MNIST_DIFFUSION_HUB_USER", "envuser")
    assert main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Space:        envuser/mnist-diffusion-lab" in out and "files for envuser/mnist-diffusion-lab" in out
    assert main(["--dry-run", "--space", "other/space", "--weights-repo", "w"]) == 0
    out = capsys.readouterr().out
    assert "files for other/space (models: envuser/w)" in out and hub.requests == []
    monkeypatch.delenv("MNIST_DIFFUSION_HUB_USER")
    monkeypatch.setenv("HF_TOKEN", "")            # no user anywhere (the fake Hub has no whoami): a named error
    assert main(["--dry-run"]) == 1
    assert "no Hub user: give --hub-user (or MNIST_DIFFUSION_HUB_USER)" in capsys.readouterr().err
