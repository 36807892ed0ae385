"""One Hub identity, configured once; a push that pins first and then publishes cards naming that commit, with no
placeholder anywhere; "Use" snippets that run as written against the fake Hub; where the weights are found when
the package is installed (issue 23)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from diffusion.identity import (DEFAULT_SPACE_NAME, DEFAULT_WEIGHTS_NAME, ENV_SOURCE_URL, ENV_USER, ENV_WEIGHTS_REPO,
                                IdentityError, find_placeholders, resolve_identity)
from hub_helpers import make_weights, same_weights

USER = "lab"
REPO = f"{USER}/{DEFAULT_WEIGHTS_NAME}"


@pytest.fixture(autouse=True)
def no_identity_env(monkeypatch):
    for var in (ENV_USER, ENV_WEIGHTS_REPO, "MNIST_DIFFUSION_SPACE", ENV_SOURCE_URL):
        monkeypatch.delenv(var, raising=False)


# ------------------------------------------------------------------ the identity


def test_arguments_win_over_the_environment_and_names_get_the_user(monkeypatch):
    monkeypatch.setenv(ENV_USER, "envuser")
    monkeypatch.setenv(ENV_WEIGHTS_REPO, "env-weights")
    ident = resolve_identity(ask_hub=False)
    assert (ident.weights_repo, ident.space, ident.source_url) == ("envuser/env-weights",
                                                                   f"envuser/{DEFAULT_SPACE_NAME}", None)
    ident = resolve_identity("me", "other/w", "s", "https://example.org/me/lab.git/", ask_hub=False)
    assert (ident.weights_repo, ident.space, ident.source_url) == ("other/w", "me/s", "https://example.org/me/lab.git")


def test_a_full_id_gives_the_namespace_of_the_other_repo():
    ident = resolve_identity(weights_repo="org/w", ask_hub=False)
    assert ident.space == f"org/{DEFAULT_SPACE_NAME}"


def test_no_user_anywhere_is_an_error_naming_the_flags_and_variables():
    with pytest.raises(IdentityError, match=re.escape(f"no Hub user: give --hub-user (or {ENV_USER})")):
        resolve_identity(ask_hub=False)
    with pytest.raises(IdentityError, match="is not a Hub repo id"):
        resolve_identity("me", "bad name!", ask_hub=False)
    with pytest.raises(IdentityError, match=f"--source-url / {ENV_SOURCE_URL} must be an https URL"):
        resolve_identity("me", source_url="git@github.com:me/lab.git", ask_hub=False)


def test_placeholders_are_found_unless_really_used():
    text = 'REVISION = "COMMIT_SHA"\nhub_repo="mnist-diffusion-lab/mnist-diffusion-lab-weights"'
    assert find_placeholders(text) == ["COMMIT_SHA", "mnist-diffusion-lab/mnist-diffusion-lab-weights"]
    real = resolve_identity(weights_repo="mnist-diffusion-lab/mnist-diffusion-lab-weights", ask_hub=False)
    assert find_placeholders(text, real) == ["COMMIT_SHA"]


# ------------------------------------------------------------------ push: pin first, then the cards


def test_push_dry_run_shows_what_would_be_written_and_sends_nothing(hub, tmp_path, capsys):
    from train.push import main
    weights = make_weights(tmp_path / "weights", ["pixel-cond"])
    assert main(["--hub-user", USER, "--weights-dir", str(weights), "--dry-run"]) is None
    out = capsys.readouterr().out
    assert f"weights repo: {REPO}" in out and f"Space:        {USER}/{DEFAULT_SPACE_NAME}" in out
    assert f'load_pipeline("pixel-cond", hub_repo="{REPO}", revision=REVISION)' in out
    assert hub.requests == [] and not (weights / "hub.json").exists()
    with pytest.raises(SystemExit, match="not pushed: no Hub user"):
        main(["--weights-dir", str(weights), "--dry-run", "--token", ""])


def test_a_push_publishes_no_placeholder_and_its_snippets_run_as_written(hub, tmp_path, capsys):
    from train.push import main
    weights = make_weights(tmp_path / "weights", ["pixel-cond", "classifier"], seed=3)
    source = "https://example.org/lab/mnist-diffusion-lab.git"
    head = main(["--hub-user", USER, "--weights-dir", str(weights), "--source-url", source])
    files = hub.files(REPO)
    weights_commit = next(u["commit"] for u in hub.uploads if u["path"] == "pixel-cond/model.safetensors")
    assert head == hub.head(REPO) != weights_commit
    # no published text carries a placeholder; every card pins the weights commit and names the real repo
    for path, data in files.items():
        if path.endswith((".md", ".json", "LICENSE")):
            assert find_placeholders(data.decode()) == [], path
    for card in ("pixel-cond/README.md", "classifier/README.md", "README.md"):
        text = files[card].decode()
        assert f'REVISION = "{weights_commit}"' in text and f'"{REPO}"' in text, card
        assert f'# pip install "mnist-diffusion-lab @ git+{source}"' in text, card
    assert f"[mnist-diffusion-lab]({source})" in files["README.md"].decode()
    # the weights commit holds the weights (and no card yet): the snippet's revision loads them
    assert "pixel-cond/model.safetensors" in hub.files(REPO, weights_commit)
    assert "pixel-cond/README.md" not in hub.files(REPO, weights_commit)
    # the local cards are the published ones; the pin says where they went
    assert (weights / "pixel-cond" / "README.md").read_bytes() == files["pixel-cond/README.md"]
    pin = json.loads((weights / "hub.json").read_text())
    assert pin == {"repo": REPO, "revision": head, "models": {"pixel-cond": weights_commit,
                                                              "classifier": weights_commit}, "source_url": source}

    # the "Use" snippets run as written (the install line is a comment) and load the pushed weights from the Hub
    hub.clear_log()
    ns: dict = {}
    exec(_snippet(files["pixel-cond/README.md"].decode()), ns)
    assert same_weights(ns["pipe"].score_model, _local("pixel-cond", weights))
    assert ns["images"].shape == (2, 28, 28) and torch.isfinite(ns["images"]).all()
    assert any(weights_commit in r["path"] and "pixel-cond/model.safetensors" in r["path"] for r in hub.requests)
    ns = {}
    exec(_snippet(files["classifier/README.md"].decode()), ns)
    assert same_weights(ns["model"], _local("classifier", weights))


def _snippet(card: str) -> str:
    return card.split("## Use", 1)[1].split("```python", 1)[1].split("```", 1)[0]


def _local(name: str, weights: Path):
    from diffusion.registry import MODEL_CLASSES
    return MODEL_CLASSES[name].from_pretrained(str(weights / name))


def test_a_card_with_a_placeholder_is_refused_before_anything_is_sent(hub, tmp_path, monkeypatch):
    from train import cards
    from train.push import main
    weights = make_weights(tmp_path / "weights", ["classifier"])
    monkeypatch.setattr(cards, "install_line", lambda source: "# pip install git+https://github.com/mnist-diffusion-lab/x")
    with pytest.raises(ValueError, match="carries the placeholder 'github.com/mnist-diffusion-lab/'"):
        main(["--hub-user", USER, "--weights-dir", str(weights), "--dry-run"])
    assert hub.requests == []


# ------------------------------------------------------------------ where an installed copy finds its weights


def _fake_models(folder: Path) -> Path:
    (folder / "pixel-cond").mkdir(parents=True)
    (folder / "pixel-cond" / "config.json").write_text("{}")
    return folder


def test_weights_default_checkout_then_installed_copy_then_a_named_path(tmp_path, monkeypatch):
    from diffusion import locations
    monkeypatch.delenv(locations.WEIGHTS_ENV, raising=False)
    assert locations.default_weights_dir() == locations.CHECKOUT_WEIGHTS      # this checkout has weights/
    assert locations.weights_origin(locations.CHECKOUT_WEIGHTS) == "the checkout"
    # installed (no weights beside the package): the copy the wheel put under <prefix>/share/...
    monkeypatch.setattr(locations, "CHECKOUT_WEIGHTS", tmp_path / "site-packages" / "weights")
    prefix = tmp_path / "venv"
    monkeypatch.setattr(sys, "prefix", str(prefix))
    monkeypatch.setattr(locations.sysconfig, "get_path", lambda name, *a, **k: str(prefix))
    assert locations.default_weights_dir() == tmp_path / "site-packages" / "weights"   # nothing anywhere
    installed = _fake_models(prefix / locations.DATA_SUBDIR)
    assert locations.default_weights_dir() == installed
    assert locations.weights_origin(installed) == "the installed package"
    # the environment variable wins over both
    monkeypatch.setenv(locations.WEIGHTS_ENV, str(tmp_path / "mine"))
    assert locations.default_weights_dir() == tmp_path / "mine"
    assert locations.weights_origin(tmp_path / "mine") == "$MNIST_DIFFUSION_WEIGHTS"
