"""Safe loading (issue 6): pickles are refused by every loading path and never run; broken safetensors
files (truncated, oversized header, wrong shape, NaN) each fail with a message naming the problem."""
from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from diffusion import ScoreModel
from diffusion.hub import WeightsNotFound, load_local, load_model
from diffusion.hub_mixin import CorruptWeightsError, UnsafeWeightsError, check_safetensors_header
from hub_helpers import evil_pickle, evil_torch_zip, make_weights, same_weights, tiny_model
from train.checkpoints import EMA, load_checkpoint, save_checkpoint


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "a pickle payload ran"


def test_the_payload_is_real(tmp_path):
    """Sanity: unpickling the payload does create its file, so 'marker absent' below means refused."""
    probe = tmp_path / "probe"
    pickle.loads(evil_pickle(probe))
    assert probe.exists()


# ------------------------------------------------------------------ pickles


def test_load_local_refuses_folder_with_only_a_pickle(tmp_path, marker):
    folder = tmp_path / "weights" / "pixel-cond"
    tiny_model("pixel-cond").save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(evil_torch_zip(marker, tmp_path))
    with pytest.raises(UnsafeWeightsError, match=r"only \['pytorch_model.bin'\].*never opened"):
        load_local("pixel-cond", tmp_path / "weights")
    with pytest.raises(FileNotFoundError,
                       match=r"model.safetensors not found \(found \['pytorch_model.bin'\]: pickle formats are refused"):
        ScoreModel.from_pretrained(folder)


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt", ".pth", ".pkl"])
def test_from_pretrained_refuses_pickle_suffix_before_opening(tmp_path, marker, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(evil_pickle(marker))
    with pytest.raises(UnsafeWeightsError, match="refusing to open .*pickle-based"):
        ScoreModel.from_pretrained(path)
    # refused by name: the same happens when the file does not even exist (nothing was opened)
    with pytest.raises(UnsafeWeightsError):
        ScoreModel.from_pretrained(tmp_path / f"missing{suffix}")


@pytest.mark.parametrize("payload", ["pickle", "torch_zip"])
def test_pickle_renamed_to_safetensors_is_sniffed_and_refused(tmp_path, marker, payload):
    folder = tmp_path / "pixel-cond"
    tiny_model("pixel-cond").save_pretrained(folder)
    data = evil_pickle(marker) if payload == "pickle" else evil_torch_zip(marker, tmp_path)
    (folder / "model.safetensors").write_bytes(data)
    with pytest.raises(UnsafeWeightsError, match="pickle / torch.save archive, not safetensors"):
        ScoreModel.from_pretrained(folder)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickles_of_every_framed_protocol_are_sniffed(tmp_path, marker, protocol):
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"net.weight": [1.0] * 10}, protocol=protocol))
    with pytest.raises(UnsafeWeightsError, match="pickle / torch.save archive"):
        check_safetensors_header(path)


@pytest.mark.parametrize("header_len", [0x80, 0x0280, 0x0380, 0x0580])
def test_safetensors_whose_length_byte_is_0x80_is_not_mistaken_for_a_pickle(tmp_path, header_len):
    """A real checkpoint was refused as a pickle: its header length 0x14680 begins (little-endian) with 0x80, the
    pickle PROTO opcode; lengths 0x0280 ... even spell PROTO 2..5. The JSON header's '{' at byte 8 tells them apart."""
    from safetensors.torch import load_file
    path = tmp_path / "state.safetensors"
    for pad in range(4096):                                   # metadata padding until the header has that length
        save_file({"w": torch.arange(3.0)}, path, metadata={"pad": "x" * pad})
        if path.read_bytes()[:8] == header_len.to_bytes(8, "little"):
            break
    assert path.read_bytes()[:8] == header_len.to_bytes(8, "little"), "no padding gave that header length"
    check_safetensors_header(path)                            # no exception
    assert load_file(path)["w"].tolist() == [0.0, 1.0, 2.0]


def _ckpt_parts(seed=0):
    model = tiny_model("pixel-cond", seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, EMA(model, 0.99), opt, {"data": torch.Generator().manual_seed(1)}


def test_resume_refuses_a_pickled_state_file(tmp_path, marker):
    ckpt = save_checkpoint(tmp_path / "run", 10, *_ckpt_parts(), extra={}, keep=2)
    (ckpt / "state.safetensors").write_bytes(evil_pickle(marker))
    with pytest.raises(UnsafeWeightsError, match="state.safetensors: it is a pickle"):
        load_checkpoint(ckpt, *_ckpt_parts())
    # a checkpoint written as state.pt (e.g. by another tool) is named, not opened
    (ckpt / "state.safetensors").unlink()
    (ckpt / "state.pt").write_bytes(evil_torch_zip(marker, tmp_path))
    with pytest.raises(FileNotFoundError, match=r"state.safetensors not found \(the folder holds \['state.pt'\]"):
        load_checkpoint(ckpt, *_ckpt_parts())


def test_resume_refuses_nan_checkpoint(tmp_path):
    model, ema, opt, gens = _ckpt_parts()
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    ckpt = save_checkpoint(tmp_path / "run", 10, model, ema, opt, gens, extra={}, keep=2)
    with pytest.raises(ValueError, match="NaN/inf"):
        load_checkpoint(ckpt, *_ckpt_parts())


def test_hub_repo_with_only_a_pickle_is_refused(hub, tmp_path, marker):
    """Both Hub paths: diffusion.hub (falls back to local weights) and ScoreModel.from_pretrained(repo_id)."""
    config = json.dumps(tiny_model("pixel-cond")._hub_mixin_config).encode()
    hub.add_files("someone/pickled", {"pixel-cond/config.json": config,
                                      "pixel-cond/pytorch_model.bin": evil_torch_zip(marker, tmp_path),
                                      "config.json": config, "pytorch_model.bin": evil_pickle(marker)})
    weights = make_weights(tmp_path / "weights", ["pixel-cond"])
    messages = []
    model = load_model("pixel-cond", weights_dir=weights, hub_repo="someone/pickled", messages=messages)
    assert same_weights(model, tiny_model("pixel-cond"))
    assert "only pixel-cond/pytorch_model.bin: pickle checkpoints can run code" in messages[0]
    assert "Using the local weights" in messages[0]
    with pytest.raises(FileNotFoundError, match="someone/pickled@main has no model.safetensors. Pickle checkpoints"):
        ScoreModel.from_pretrained("someone/pickled")
    assert not any(p.endswith(".bin") for p in hub.paths_requested()), "a pickle was downloaded"


# ------------------------------------------------------------------ broken safetensors


@pytest.fixture
def folder(tmp_path):
    f = tmp_path / "pixel-cond"
    tiny_model("pixel-cond").save_pretrained(f)
    return f


def test_round_trip_is_strict_and_exact(folder):
    assert same_weights(ScoreModel.from_pretrained(folder), tiny_model("pixel-cond"))
    with pytest.raises(ValueError, match="non-strict loading is not supported"):
        ScoreModel.from_pretrained(folder, strict=False)


def test_truncated_safetensors(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CorruptWeightsError,
                       match=r"model.safetensors is truncated: the header promises \d+ bytes, the file has \d+"):
        ScoreModel.from_pretrained(folder)
    path.write_bytes(path.read_bytes()[:100])  # cut inside the header
    with pytest.raises(CorruptWeightsError, match="is truncated: its safetensors header claims"):
        ScoreModel.from_pretrained(folder)


def test_oversized_header(folder):
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}" + b"\0" * 64)
    with pytest.raises(CorruptWeightsError, match=r"oversized safetensors header: it claims 1099511627776 bytes"):
        ScoreModel.from_pretrained(folder)


def test_malformed_header(folder):
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 8) + b"not json" + b"\0" * 16)
    with pytest.raises(CorruptWeightsError, match="malformed safetensors header"):
        ScoreModel.from_pretrained(folder)


def test_wrong_shape(folder):
    other = ScoreModel(num_classes=10, channels=(8, 24), attention_levels=(1,), embed_dim=32, context_dim=16)
    save_file(other.state_dict(), str(folder / "model.safetensors"))
    with pytest.raises(CorruptWeightsError,
                       match=r"has shape \(.*\), the model expects \(.*\) \(config.json and weights disagree\)"):
        ScoreModel.from_pretrained(folder)


def test_missing_and_unexpected_keys(folder):
    state = tiny_model("pixel-cond").state_dict()
    state.pop(next(iter(state)))
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CorruptWeightsError, match=r"missing keys \['.+'\], unexpected keys \['extra.weight'\]"):
        ScoreModel.from_pretrained(folder)


def test_nan_weights_refused(folder):
    model = tiny_model("pixel-cond")
    with torch.no_grad():
        model.net.class_embed.weight[3, 0] = float("nan")
    model.save_pretrained(folder)
    with pytest.raises(CorruptWeightsError, match=r"net.class_embed.weight holds NaN or inf values"):
        ScoreModel.from_pretrained(folder)


def test_config_must_exist_and_match_the_class(folder, tmp_path):
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        ScoreModel.from_pretrained(folder)
    ae = tmp_path / "autoencoder"
    tiny_model("autoencoder").save_pretrained(ae)
    with pytest.raises(CorruptWeightsError,
                       match=r"keys \['hidden', 'latent_channels', 'latent_scale'\] that ScoreModel does not take"):
        ScoreModel.from_pretrained(ae)


def test_header_check_names_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors not found"):
        check_safetensors_header(tmp_path / "nothing.safetensors")


def test_load_local_missing_weights_says_how_to_get_them(tmp_path):
    with pytest.raises(WeightsNotFound, match=r"no trained weights for 'pixel-cond'.*python -m train.pixel_cond"):
        load_local("pixel-cond", tmp_path)
