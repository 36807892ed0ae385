"""Push to and load from the Hub (issue 3), against the fake Hub in tests/fakehub.py.

Every test runs a fresh fake Hub on 127.0.0.1 with its own Hub cache (see hub_helpers.hub)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from diffusion.hub import (HubCorruptDownload, HubFileNotFound, HubRepoNotFound, HubRevisionNotFound,
                           fetch_folder, hub_pin, load_model, load_pipelines, push_folder, verify_folder)
from diffusion.hub_mixin import CorruptWeightsError, UnsafeWeightsError
from hub_helpers import make_weights, same_weights, tiny_model

REPO = "lab/mnist-diffusion-lab"
NAMES = ("pixel-uncond", "pixel-cond", "latent-cond", "autoencoder")


@pytest.fixture
def published(hub, tmp_path):
    """Weights (seed 1) pushed to REPO; a different local copy (seed 0) to tell the two apart."""
    pushed = make_weights(tmp_path / "pushed", NAMES, seed=1)
    shas = [push_folder(pushed / n, REPO, token="hf_fake_token") for n in NAMES]
    local = make_weights(tmp_path / "local", NAMES, seed=0)
    hub.clear_log()
    return {"sha": shas[-1], "shas": shas, "pushed": pushed, "local": local}


def from_hub(model, name):
    return same_weights(model, tiny_model(name, seed=1))


def from_local(model, name):
    return same_weights(model, tiny_model(name, seed=0))


def cache_files(hub):
    return sorted(str(p.relative_to(hub.cache)) for p in hub.cache.rglob("*") if p.is_file() or p.is_symlink())


# ------------------------------------------------------------------ push


def test_push_uploads_exactly_the_published_files_byte_identical(hub, tmp_path):
    weights = make_weights(tmp_path / "weights", ["pixel-cond"])
    folder = weights / "pixel-cond"
    sha = push_folder(folder, REPO, token="hf_fake_token")
    assert sha == hub.head(REPO) and len(sha) == 40
    uploaded = {u["path"]: u for u in hub.uploads}
    assert set(uploaded) == {"pixel-cond/config.json", "pixel-cond/model.safetensors", "pixel-cond/README.md"}
    for path, u in uploaded.items():
        assert u["data"] == (folder / path.split("/")[1]).read_bytes(), path
        assert u["commit"] == sha
    assert uploaded["pixel-cond/model.safetensors"]["mode"] == "lfs"  # through the LFS batch + PUT path
    assert set(hub.files(REPO, sha)) == {".gitattributes", *uploaded}
    assert json.loads((weights / "hub.json").read_text()) == {"repo": REPO, "revision": sha,
                                                             "models": {"pixel-cond": sha}}
    assert hub_pin(weights) == {"repo": REPO, "revision": sha, "models": {"pixel-cond": sha}}
    # a second model: a new commit, which holds both; the pin follows it
    sha2 = push_folder(make_weights(weights, ["autoencoder"]) / "autoencoder", REPO, token="hf_fake_token")
    assert sha2 != sha
    assert {"pixel-cond/model.safetensors", "autoencoder/model.safetensors"} <= set(hub.files(REPO, sha2))
    assert hub_pin(weights) == {"repo": REPO, "revision": sha2, "models": {"pixel-cond": sha, "autoencoder": sha2}}


@pytest.mark.parametrize("decoy", ["optimizer.safetensors", "pytorch_model.bin", "ckpt-00000100"])
def test_push_refuses_a_folder_with_anything_else(hub, tmp_path, decoy):
    folder = make_weights(tmp_path / "weights", ["pixel-cond"]) / "pixel-cond"
    if decoy.startswith("ckpt"):
        (folder / decoy).mkdir()
        (folder / decoy / "state.safetensors").write_bytes(b"x")
    else:
        (folder / decoy).write_bytes(b"training state")
    with pytest.raises(ValueError, match=rf"holds files that must not be published: \['{decoy}'\]"):
        push_folder(folder, REPO, token="hf_fake_token")
    assert hub.requests == [] and hub.uploads == []  # refused before any contact with the Hub
    assert not (tmp_path / "weights" / "hub.json").exists()


def test_push_refuses_weights_that_do_not_reload_or_are_not_finite(hub, tmp_path):
    folder = make_weights(tmp_path / "weights", ["pixel-cond"]) / "pixel-cond"
    model = tiny_model("pixel-cond")
    with torch.no_grad():
        model.net.class_embed.weight[0, 0] = float("nan")
    model.save_pretrained(folder)
    with pytest.raises(CorruptWeightsError, match="holds NaN or inf"):
        push_folder(folder, REPO, token="hf_fake_token")
    # finite weights whose outputs overflow
    with torch.no_grad():
        model.net.class_embed.weight.fill_(1.0)
        for p in model.parameters():
            p.mul_(1e30)
    model.save_pretrained(folder)
    with pytest.raises(ValueError, match="produces non-finite outputs; refusing to push"):
        verify_folder(folder)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")  # truncated
    with pytest.raises(CorruptWeightsError, match="truncated"):
        push_folder(folder, REPO, token="hf_fake_token")
    assert hub.requests == []


def test_push_cli_verifies_all_then_pushes_and_records(hub, tmp_path, capsys):
    from train.push import main
    weights = make_weights(tmp_path / "weights", ["pixel-cond", "autoencoder"])
    (weights / "autoencoder" / "notes.txt").write_text("x")
    with pytest.raises(SystemExit, match="autoencoder.*must not be published"):
        main(["--repo-id", REPO, "--weights-dir", str(weights), "--names", "pixel-cond,autoencoder"])
    assert hub.uploads == []  # nothing pushed when any folder fails
    (weights / "autoencoder" / "notes.txt").unlink()
    pin_file = tmp_path / "pins" / "hub.json"
    pin_file.parent.mkdir()
    main(["--repo-id", REPO, "--weights-dir", str(weights), "--names", "pixel-cond,autoencoder",
          "--revision-file", str(pin_file), "--no-root-card"])
    pin = json.loads(pin_file.read_text())
    assert pin["repo"] == REPO and pin["revision"] == hub.head(REPO)
    # pin first, then the cards: both folders' weights in one commit, the cards (naming it) in the next
    weights_commit = next(u["commit"] for u in hub.uploads if u["path"] == "pixel-cond/model.safetensors")
    assert pin["models"] == {"pixel-cond": weights_commit, "autoencoder": weights_commit}
    assert weights_commit != hub.head(REPO)
    assert {u["commit"] for u in hub.uploads if u["path"].endswith("README.md")} == {hub.head(REPO)}
    assert {u["path"] for u in hub.uploads} == {f"{n}/{f}" for n in ("pixel-cond", "autoencoder")
                                               for f in ("config.json", "model.safetensors", "README.md")}
    assert hub.head(REPO) in capsys.readouterr().out


# ------------------------------------------------------------------ load


def test_pinned_load_downloads_once_then_needs_no_network(hub, published):
    messages = []
    pipes, messages = load_pipelines(weights_dir=published["local"], hub_repo=REPO, revision=published["sha"])
    assert set(pipes) == {"pixel-uncond", "pixel-cond", "latent-cond"}
    assert from_hub(pipes["pixel-cond"].score_model, "pixel-cond")
    assert from_hub(pipes["latent-cond"].autoencoder, "autoencoder")
    assert len(messages) == 4 and all(f"loaded from the Hub, {REPO}@{published['sha'][:12]}" in m and "downloaded" in m
                                      for m in messages), messages
    assert hub.requests, "the first load should have downloaded"
    # the CDN (another origin) never receives the token; the Hub API does
    cdn = [r for r in hub.requests if r["host"] == "localhost"]
    assert cdn and not any("authorization" in r["headers"] for r in cdn)
    hub.clear_log()
    pipes, messages = load_pipelines(weights_dir=published["local"], hub_repo=REPO, revision=published["sha"])
    assert hub.requests == [], [r["path"] for r in hub.requests]
    assert all("from the local Hub cache, no network needed" in m for m in messages), messages
    assert from_hub(pipes["pixel-uncond"].score_model, "pixel-uncond")


def test_revision_defaults_to_the_pin_recorded_by_push(hub, published):
    messages = []
    # the push recorded the last commit in pushed/hub.json: use that folder as weights_dir
    model = load_model("pixel-cond", weights_dir=published["pushed"], hub_repo=REPO, messages=messages)
    assert from_hub(model, "pixel-cond")
    assert f"{REPO}@{published['sha'][:12]} (pinned in hub.json)" in messages[0]
    hub.clear_log()
    load_model("pixel-cond", weights_dir=published["pushed"], hub_repo=REPO)
    assert hub.requests == []


@pytest.mark.parametrize("how", ["refuse", "503", "HF_HUB_OFFLINE"])
def test_offline_with_a_warm_cache_serves_from_the_cache(hub, published, monkeypatch, how):
    load_model("pixel-cond", weights_dir=published["local"], hub_repo=REPO, revision="main")  # warm, by branch
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        hub.go_offline(how)
    messages = []
    model = load_model("pixel-cond", weights_dir=published["local"], hub_repo=REPO, revision="main", messages=messages)
    assert from_hub(model, "pixel-cond"), messages
    expected = "(offline mode)" if how == "HF_HUB_OFFLINE" else "(the Hub could not be reached)"
    assert f"loaded from the Hub, {REPO}@{published['sha'][:12]}" in messages[0] and expected in messages[0]
    if how == "refuse":  # back online: the branch is resolved on the Hub again
        hub.go_online()
        hub.clear_log()
        messages = []
        load_model("pixel-cond", weights_dir=published["local"], hub_repo=REPO, revision="main", messages=messages)
        assert messages[0].endswith(", main resolved on the Hub, files from the local Hub cache")
        assert hub.paths_requested() == [f"/api/models/{REPO}/revision/main"]


@pytest.mark.parametrize("how", ["refuse", "503", "HF_HUB_OFFLINE"])
def test_offline_with_a_cold_cache_falls_back_to_local_weights(hub, published, monkeypatch, how):
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        hub.go_offline(how)
    messages = []
    model = load_model("pixel-cond", weights_dir=published["local"], hub_repo=REPO, revision=published["sha"],
                       messages=messages)
    assert from_local(model, "pixel-cond")
    msg = messages[0]
    assert msg.startswith("pixel-cond: not loaded from the Hub: ")
    assert msg.endswith("Using the local weights in .../local/pixel-cond")  # no absolute server paths on the page
    if how == "HF_HUB_OFFLINE":
        assert (f"offline mode is on (HF_HUB_OFFLINE=1) and {REPO}@{published['sha'][:12]} "
                "is not in the local Hub cache") in msg
    else:
        assert f"the Hub at {hub.url} could not be reached" in msg and "is not in the local Hub cache" in msg


def test_repo_revision_and_file_not_found_each_say_which(hub, published):
    def message(**kw):
        messages = []
        model = load_model(kw.pop("name", "pixel-cond"), weights_dir=published["local"], messages=messages, **kw)
        assert from_local(model, "pixel-cond" if "name" not in kw else kw["name"])
        return messages[0]

    m_repo = message(hub_repo="lab/no-such-repo", revision="main")
    m_rev = message(hub_repo=REPO, revision="v9.9")
    m_sha = message(hub_repo=REPO, revision="0" * 40)
    hub.add_files("lab/partial", {"pixel-cond/config.json": b"{}"})
    m_file = message(hub_repo="lab/partial", revision="main")
    assert "the Hub repository 'lab/no-such-repo' was not found" in m_repo
    assert f"the Hub repository '{REPO}' has no revision 'v9.9' (no such commit, branch or tag)" in m_rev
    assert f"has no revision '{'0' * 40}'" in m_sha
    assert "lab/partial@main (commit " in m_file
    assert "has no pixel-cond/model.safetensors (pixel-cond/ holds ['config.json'])" in m_file
    assert len({m_repo, m_rev, m_file}) == 3
    for exc, kw in [(HubRepoNotFound, dict(repo_id="lab/no-such-repo")), (HubRevisionNotFound, dict(revision="v9.9")),
                    (HubFileNotFound, dict(name="classifier"))]:
        with pytest.raises(exc):
            fetch_folder(kw.get("name", "pixel-cond"), kw.get("repo_id", REPO), kw.get("revision", "main"))


@pytest.mark.parametrize("fault", ["truncate", "corrupt"])
def test_broken_download_keeps_nothing_and_falls_back(hub, published, fault):
    path = "pixel-cond/model.safetensors"
    if fault == "truncate":
        hub.truncate[path] = 200
    else:
        hub.corrupt.add(path)
    messages = []
    model = load_model("pixel-cond", weights_dir=published["local"], hub_repo=REPO, revision=published["sha"],
                       messages=messages)
    assert from_local(model, "pixel-cond")
    expected = "was incomplete" if fault == "truncate" else "does not match the Hub's checksum"
    assert expected in messages[0] and "Using the local weights" in messages[0], messages[0]
    leftovers = [f for f in cache_files(hub) if f.endswith(".incomplete") or f.endswith(path)]
    assert leftovers == [], leftovers
    blobs = [p for p in hub.cache.rglob("blobs/*") if p.stat().st_size > 1000]
    assert blobs == [], "a partial or corrupt weights blob stayed in the cache"
    with pytest.raises(HubCorruptDownload):
        fetch_folder("pixel-cond", REPO, published["sha"])
    # once the Hub serves the file intact again, the same call repairs the cache
    hub.truncate.clear()
    hub.corrupt.clear()
    messages = []
    model = load_model("pixel-cond", weights_dir=published["local"], hub_repo=REPO, revision=published["sha"],
                       messages=messages)
    assert from_hub(model, "pixel-cond") and "downloaded" in messages[0]


def test_cached_file_corrupted_on_disk_is_redownloaded(hub, published):
    folder, sha, how = fetch_folder("pixel-cond", REPO, published["sha"])
    assert how == "download"
    blob = (folder / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    folder, sha, how = fetch_folder("pixel-cond", REPO, published["sha"])
    assert how == "download" and (folder / "model.safetensors").read_bytes() != bytes(data)


def test_no_hub_repo_loads_local_and_says_so(hub, published):
    pipes, messages = load_pipelines(["pixel-cond"], weights_dir=published["local"])
    assert from_local(pipes["pixel-cond"].score_model, "pixel-cond")
    assert messages == ["pixel-cond: loaded from .../local/pixel-cond"]
    assert hub.requests == []


def test_hub_failure_and_no_local_weights_is_reported_not_raised(hub, published, tmp_path):
    pipes, messages = load_pipelines(["pixel-cond"], weights_dir=tmp_path / "empty", hub_repo="lab/no-such-repo")
    assert pipes == {}
    assert messages[0].startswith("pixel-cond: unavailable (WeightsNotFound: the Hub repository 'lab/no-such-repo' "
                                  "was not found")
    assert "and the local weights are unusable too" in messages[0]


def test_an_unreachable_hub_is_asked_once_per_load_pipelines(hub, published):
    hub.go_offline("503")
    pipes, messages = load_pipelines(weights_dir=published["local"], hub_repo=REPO, revision="main")
    assert set(pipes) == {"pixel-uncond", "pixel-cond", "latent-cond"}
    assert len(hub.requests) == 1, [r["path"] for r in hub.requests]
    assert "could not be reached (HTTP 503 Service Unavailable)" in messages[0]
    assert all("the Hub could not be reached (see above)" in m and "Using the local weights" in m
               for m in messages[1:]), messages


def test_from_pretrained_takes_a_repo_id_and_subfolder(hub, published):
    from diffusion import ScoreModel
    model = ScoreModel.from_pretrained(REPO, revision=published["sha"], subfolder="pixel-cond")
    assert from_hub(model, "pixel-cond")
    with pytest.raises(FileNotFoundError, match=f"{REPO}@main in classifier/ has no config.json"):
        ScoreModel.from_pretrained(REPO, subfolder="classifier")


def test_a_hub_copy_with_nan_weights_is_refused(hub, published, tmp_path):
    model = tiny_model("pixel-cond", seed=1)
    with torch.no_grad():
        model.net.class_embed.weight[0, 0] = float("nan")
    bad = tmp_path / "bad" / "pixel-cond"
    model.save_pretrained(bad)
    sha = hub.add_files(REPO, {"pixel-cond/model.safetensors": (bad / "model.safetensors").read_bytes()})
    messages = []
    model = load_model("pixel-cond", weights_dir=published["local"], hub_repo=REPO, revision=sha, messages=messages)
    assert from_local(model, "pixel-cond")
    assert f"the Hub copy {REPO}@{sha[:12]} of pixel-cond is unusable: CorruptWeightsError: " in messages[0]
    assert "net.class_embed.weight holds NaN or inf values" in messages[0]


def test_the_fake_hub_answers_like_the_hub(hub, published, tmp_path):
    """The error codes huggingface_hub maps to its exceptions, and the download headers it relies on."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
    kw = dict(endpoint=hub.url, cache_dir=tmp_path / "c")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("lab/nope", "config.json", **kw)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "pixel-cond/config.json", revision="nope", **kw)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "pixel-cond/nope.json", **kw)
    codes = [r for r in hub.requests if r["method"] == "HEAD"]
    assert len(codes) == 3
    path = hf_hub_download(REPO, "pixel-cond/model.safetensors", revision=published["sha"], **kw)
    assert open(path, "rb").read() == (published["pushed"] / "pixel-cond" / "model.safetensors").read_bytes()


# ------------------------------------------------------------------ pin rule and cards, in one place


def test_the_revision_pin_rule(tmp_path):
    from diffusion.pinning import record_pin, resolve_revision
    record_pin(tmp_path / "hub.json", REPO, "a" * 40, {"pixel-cond": "a" * 40})
    assert resolve_revision(REPO, None, tmp_path) == "a" * 40          # the pin, for its repo
    assert resolve_revision(REPO, "v1", tmp_path) == "v1"              # an explicit revision wins
    assert resolve_revision("lab/other", None, tmp_path) is None       # another repo: head of main
    assert resolve_revision(None, None, tmp_path) is None
    (tmp_path / "hub.json").write_text("not json")
    assert resolve_revision(REPO, None, tmp_path) is None


def test_model_cards_come_from_the_pinned_hub_copy_else_local(hub, published):
    from diffusion.hub import read_model_cards
    names = ("pixel-cond", "autoencoder")
    local = read_model_cards(names, weights_dir=published["local"])
    assert set(local) == set(names) and "(seed 0)" in local["pixel-cond"]
    # not yet in the Hub cache: the local card, and no request is made
    assert read_model_cards(names, weights_dir=published["local"], hub_repo=REPO, revision=published["sha"]) == local
    assert hub.requests == []
    load_model("pixel-cond", weights_dir=published["local"], hub_repo=REPO, revision=published["sha"])
    hub.clear_log()
    cards = read_model_cards(names, weights_dir=published["local"], hub_repo=REPO, revision=published["sha"])
    assert "(seed 1)" in cards["pixel-cond"] and "(seed 0)" in cards["autoencoder"]
    # without a revision the pin for that repo is used (pushed/hub.json pins the last push)
    (published["pushed"] / "pixel-cond" / "README.md").unlink()
    cards = read_model_cards(names, weights_dir=published["pushed"], hub_repo=REPO)
    assert "(seed 1)" in cards["pixel-cond"]
    assert hub.requests == []


def test_push_takes_the_training_time_lapse_and_refuses_a_disguised_pickle(hub, tmp_path):
    from safetensors.torch import save_file
    folder = make_weights(tmp_path / "weights", ["pixel-cond"]) / "pixel-cond"
    save_file({"frames": torch.zeros(2, 4, 4, dtype=torch.uint8)}, str(folder / "timelapse.safetensors"))
    assert "timelapse.safetensors" in verify_folder(folder)
    push_folder(folder, REPO, token="hf_fake_token")
    assert "pixel-cond/timelapse.safetensors" in hub.files(REPO)
    (folder / "timelapse.safetensors").write_bytes(b"\x80\x04\x95" + b"\0" * 64)  # a pickle under that name
    with pytest.raises(UnsafeWeightsError, match="pickle"):
        verify_folder(folder)
