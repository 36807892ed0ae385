"""U-Net / ScoreModel / AutoEncoder / Classifier: shapes, the score preconditioning, classifier-free guidance,
the Pipeline, and strict safetensors-only save/load (pickles refused before a byte is read)."""
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusion.autoencoder import AutoEncoder
from diffusion.hub_mixin import CorruptWeightsError, UnsafeWeightsError, load_state_dict_checked
from diffusion.metrics import Classifier
from diffusion.pipeline import Pipeline
from diffusion.score import ScoreModel
from diffusion.unet import UNet
from factories import tiny_score

def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def cond():
    return tiny_score(num_classes=10)


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("kw,shape", [
    (dict(num_classes=10), (3, 1, 28, 28)),                                           # pixel, conditional
    (dict(num_classes=None, attention_levels=()), (3, 1, 28, 28)),                   # pixel, plain U-Net
    (dict(num_classes=10, in_channels=4, image_size=10, channels=(8, 16, 16), attention_levels=(1, 2)),
     (3, 4, 10, 10)),                                                                  # latent 10 -> 5 -> 3
    (dict(num_classes=10, skip="add", channels=(8, 8, 8), attention_levels=(2,)), (3, 1, 28, 28)),
    (dict(num_classes=None, skip="add", channels=(8, 8, 8), attention_levels=(0,)), (3, 1, 28, 28)),
])
def test_score_model_shapes(kw, shape):
    model = tiny_score(**kw)
    x, t = randn(*shape), torch.tensor([0.01, 0.5, 1.0])
    labels = torch.tensor([0, 9, 10]) if model.conditional else None
    out = model(x, t, labels)
    assert out.shape == shape and torch.isfinite(out).all()
    assert model.sample_shape == shape[1:]


def test_skip_styles_differ_in_structure():
    concat = UNet(1, (8, 8), (), None, 16, 8, "concat", 2)
    add = UNet(1, (8, 8), (), None, 16, 8, "add", 2)
    assert concat.up_blocks[0].conv1.in_channels == 16 and add.up_blocks[0].conv1.in_channels == 8
    with pytest.raises(ValueError, match="skip"):
        UNet(skip="residual")
    # the decoder's upsampling conv brings the width back to the encoder's, so "add" works for any widths
    add_wide = UNet(1, (8, 16), (), None, 16, 8, "add", 2)
    assert add_wide(randn(2, 1, 28, 28), torch.tensor([0.1, 0.9])).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(channels=(8, 16), attention_levels=(2,))


def test_null_label_is_the_default_for_conditional_models(cond):
    x, t = randn(2, 1, 28, 28), torch.tensor([0.3, 0.6])
    assert torch.equal(cond(x, t), cond(x, t, torch.tensor([10, 10])))
    assert cond.null_label == 10
    assert cond.label_embeddings().shape == (11, 8)
    with pytest.raises(ValueError):
        tiny_score().null_label


def test_labels_change_the_output(cond):
    # otherwise the guidance tests below would pass trivially
    x, t = randn(2, 1, 28, 28), torch.tensor([0.3, 0.6])
    assert not torch.allclose(cond(x, t, torch.tensor([1, 1])), cond(x, t, torch.tensor([7, 7])), atol=1e-4)


def test_float_labels_are_embeddings(cond):
    x, t = randn(2, 1, 28, 28), torch.tensor([0.3, 0.6])
    labels = torch.tensor([3, 8])
    emb = cond.label_embeddings()[labels]
    assert torch.allclose(cond(x, t, emb), cond(x, t, labels), atol=1e-6)
    halfway = 0.5 * (cond.label_embeddings()[3] + cond.label_embeddings()[8])
    assert cond(x, t, halfway.expand(2, -1)).shape == x.shape


@pytest.mark.parametrize("labels", [[0, 11], [-1, 3]])
def test_invalid_labels_raise(cond, labels):
    with pytest.raises(ValueError, match="labels"):
        cond(randn(2, 1, 28, 28), torch.tensor([0.5, 0.5]), torch.tensor(labels))


def test_labels_for_an_unconditional_model_raise():
    model = tiny_score()
    x, t = randn(2, 1, 28, 28), torch.tensor([0.5, 0.5])
    for guidance in (1.0, 3.0):
        with pytest.raises(ValueError, match="unconditional"):
            model(x, t, torch.tensor([1, 2]), guidance=guidance)
    with pytest.raises(ValueError, match="unconditional"):
        model.net(x, t, torch.tensor([1, 2]))


# ---------------------------------------------------------------- score = net / std(t), guidance


def test_score_is_network_output_over_std(cond):
    x, t, labels = randn(3, 1, 28, 28), torch.tensor([1e-3, 0.2, 1.0]), torch.tensor([1, 2, 3])
    std = cond.sde.marginal_std(t)[:, None, None, None]
    assert torch.allclose(cond(x, t, labels), cond.net(x, t, labels) / std, rtol=1e-5, atol=1e-6)


def test_scalar_t_broadcasts(cond):
    x, labels = randn(3, 1, 28, 28), torch.tensor([1, 2, 3])
    assert torch.allclose(cond(x, 0.4, labels), cond(x, torch.full((3,), 0.4), labels), atol=1e-6)


def test_batch_members_are_independent(cond):
    # GroupNorm and attention act per sample: what makes the batched [cond; uncond] guidance call exact
    x, t, labels = randn(3, 1, 28, 28), torch.tensor([0.1, 0.5, 0.9]), torch.tensor([4, 5, 10])
    full = cond(x, t, labels)
    for i in range(3):
        assert torch.allclose(full[i:i + 1], cond(x[i:i + 1], t[i:i + 1], labels[i:i + 1]), atol=1e-5)


@pytest.mark.parametrize("float_labels", [False, True])
def test_classifier_free_guidance(cond, float_labels):
    x, t = randn(3, 1, 28, 28), torch.tensor([0.1, 0.5, 0.9])
    labels = torch.tensor([2, 5, 7])
    s_c = cond(x, t, labels)
    s_u = cond(x, t, torch.full((3,), 10))
    given = cond.label_embeddings()[labels] if float_labels else labels
    assert torch.allclose(cond(x, t, given, guidance=1.0), s_c, atol=1e-5)
    assert torch.allclose(cond(x, t, given, guidance=0.0), s_u, atol=1e-5)
    assert torch.allclose(cond(x, t, given, guidance=3.0), s_u + 3.0 * (s_c - s_u), atol=1e-4)
    assert not torch.allclose(s_c, s_u, atol=1e-3)


def test_guidance_is_ignored_without_labels():
    model = tiny_score()
    x, t = randn(2, 1, 28, 28), torch.tensor([0.5, 0.5])
    assert torch.equal(model(x, t, guidance=4.0), model(x, t))


# ---------------------------------------------------------------- autoencoder


def test_autoencoder_shapes_and_scaling():
    torch.manual_seed(0)
    ae = AutoEncoder(latent_channels=4, hidden=8, latent_scale=2.5).eval()
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    z_raw, z = ae.encode(x, scaled=False), ae.encode(x)
    assert z.shape == (2, 4, 10, 10) == (2, *ae.latent_shape)
    assert torch.allclose(z, z_raw / 2.5)
    img = ae.decode(z)
    assert img.shape == (2, 1, 28, 28)                         # a linear output (~[0, 1]; the Pipeline clamps)
    assert torch.allclose(img, ae.decode(z_raw, scaled=False), atol=1e-6)
    assert torch.allclose(img, ae(x), atol=1e-6)
    with pytest.raises(ValueError, match="latent_scale"):
        AutoEncoder(latent_scale=0.0)


# ---------------------------------------------------------------- pipeline


def test_pixel_pipeline(cond):
    pipe = Pipeline(cond, name="tiny")
    images, last = pipe.generate([0, 1, 2], num_steps=3, seed=5, guidance=2.0)
    assert images.shape == (3, 28, 28) and images.min() >= 0 and images.max() <= 1
    assert last.final and last.nfe == 3 and last.num_steps == 3
    again, _ = pipe.generate([0, 1, 2], num_steps=3, seed=5, guidance=2.0)
    assert torch.equal(images, again)
    steps = list(pipe.stream([4], num_steps=5, sampler="heun", preview_every=2, seed=0))
    assert [s.i for s in steps] == [0, 2, 4] and steps[-1].final and steps[-1].nfe == 9
    with pytest.raises(ValueError, match="digits"):
        pipe.generate([10], num_steps=2)
    with pytest.raises(ValueError, match="labels"):
        pipe.generate(None, num_images=2, num_steps=2)


def test_latent_pipeline():
    score = tiny_score(num_classes=10, in_channels=4, image_size=10)
    ae = AutoEncoder(hidden=8, latent_scale=0.7)
    images, last = Pipeline(score, ae).generate([3, 4], num_steps=2, seed=0)
    assert images.shape == (2, 28, 28) and last.final
    assert images.min() >= 0 and images.max() <= 1            # the decoder's output is linear; the Pipeline clamps
    with pytest.raises(ValueError, match="autoencoder"):
        Pipeline(tiny_score(num_classes=10), ae)


# ---------------------------------------------------------------- save / load


def _roundtrip(model, tmp_path, *inputs):
    model.eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir() if p.suffix != ".md") == ["config.json", "model.safetensors"]
    loaded = type(model).from_pretrained(tmp_path / "m")
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(model(*inputs), loaded(*inputs))
    return json.loads((tmp_path / "m" / "config.json").read_text()), loaded


def test_score_model_roundtrip(tmp_path):
    model = tiny_score(num_classes=10, sigma=30.0, skip="concat")
    x, t, labels = randn(2, 1, 28, 28), torch.tensor([0.2, 0.9]), torch.tensor([1, 10])
    config, loaded = _roundtrip(model, tmp_path, x, t, labels)
    assert config["sigma"] == 30.0 and config["num_classes"] == 10 and config["channels"] == [8, 16]
    assert loaded.sde.sigma == 30.0
    assert torch.equal(loaded.net.time_embed[0].W, model.net.time_embed[0].W)  # the Fourier buffer travels


def test_autoencoder_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = AutoEncoder(hidden=8, latent_scale=0.37)
    config, loaded = _roundtrip(model, tmp_path, torch.rand(2, 1, 28, 28))
    assert config["latent_scale"] == 0.37 and loaded.latent_scale == 0.37


def test_classifier_roundtrip_keeps_batchnorm_statistics(tmp_path):
    torch.manual_seed(0)
    model = Classifier(width=4, feature_dim=8)
    model.train()(torch.rand(8, 1, 28, 28) * 3)  # move the BatchNorm running statistics off their defaults
    _, loaded = _roundtrip(model, tmp_path, torch.rand(2, 1, 28, 28))
    assert torch.equal(loaded.body[1].running_mean, model.body[1].running_mean)


class _MakesAFile:
    """A pickle payload that creates a file when unpickled (standing in for arbitrary code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_MakesAFile(marker))
    pickle.loads(payload).close()  # control: unpickling really does create the file
    assert marker.exists()
    marker.unlink()
    return payload, marker


def test_pickles_are_refused_before_opening(tmp_path, evil, monkeypatch):
    payload, marker = evil
    model = tiny_score(num_classes=10)
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(payload)
    (tmp_path / "x.pt").write_bytes(payload)
    with pytest.raises(FileNotFoundError, match="pickle formats are refused"):
        ScoreModel.from_pretrained(tmp_path / "m")
    for path in (tmp_path / "m" / "pytorch_model.bin", tmp_path / "x.pt"):
        with pytest.raises(UnsafeWeightsError, match="pickle"):
            ScoreModel.from_pretrained(path)
        with pytest.raises(UnsafeWeightsError, match="pickle"):
            load_state_dict_checked(model, path)
    monkeypatch.chdir(tmp_path)  # a relative name must not be taken for a Hub repo id
    with pytest.raises(UnsafeWeightsError):
        ScoreModel.from_pretrained("x.pt")
    assert not marker.exists()


def test_pickle_renamed_to_safetensors_is_not_unpickled(tmp_path, evil):
    payload, marker = evil
    model = tiny_score(num_classes=10)
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(payload)
    with pytest.raises((UnsafeWeightsError, CorruptWeightsError)):
        ScoreModel.from_pretrained(tmp_path / "m")
    assert not marker.exists()


def test_a_file_path_gets_a_clear_error(tmp_path):
    tiny_score().save_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="folder"):
        ScoreModel.from_pretrained(tmp_path / "m" / "model.safetensors")


@pytest.mark.parametrize("keep,match", [(0.5, "truncated"), (4, "not a safetensors file"), (20, "header")])
def test_truncated_weights(tmp_path, keep, match):
    tiny_score().save_pretrained(tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    with pytest.raises(CorruptWeightsError, match=match):
        ScoreModel.from_pretrained(tmp_path / "m")


def test_config_and_weights_disagree(tmp_path):
    tiny_score(num_classes=10).save_pretrained(tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "channels": [8, 12]}))
    with pytest.raises(CorruptWeightsError, match="shape"):
        ScoreModel.from_pretrained(tmp_path / "m")
    cfg_path.write_text(json.dumps({**cfg, "num_classes": None}))
    with pytest.raises(CorruptWeightsError, match="unexpected keys"):
        ScoreModel.from_pretrained(tmp_path / "m")


def test_non_finite_weights_refused(tmp_path):
    tiny_score().save_pretrained(tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    state = load_file(str(f))
    key = "net.conv_out.weight"
    state[key] = state[key].clone()
    state[key][0, 0, 0, 0] = float("nan")
    save_file(state, str(f))
    with pytest.raises(CorruptWeightsError, match="NaN") as err:
        ScoreModel.from_pretrained(tmp_path / "m")
    assert key in str(err.value)


def test_non_strict_loading_refused(tmp_path):
    tiny_score().save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="strict"):
        ScoreModel.from_pretrained(tmp_path / "m", strict=False)
    assert os.path.isfile(tmp_path / "m" / "model.safetensors")


def test_generate_decodes_only_the_final_sample():
    """generate() streams no previews: a latent pipeline runs its decoder exactly once."""
    from diffusion.pipeline import Pipeline
    from factories import tiny_model

    ae, score = tiny_model("autoencoder"), tiny_model("latent-cond")
    decodes = []
    ae.decoder.register_forward_hook(lambda *a: decodes.append(1))
    images, last = Pipeline(score, ae).generate([1, 2], num_steps=4, seed=0)
    assert images.shape == (2, 28, 28) and last.final and len(decodes) == 1
    steps = list(Pipeline(score, ae).stream([1], num_steps=4, preview_every=0, seed=0))
    assert len(steps) == 1 and steps[0].final
    with pytest.raises(ValueError, match="preview_every"):
        list(Pipeline(score, ae).stream([1], num_steps=4, preview_every=-1))


# ---------------------------------------------------------------- EDM preconditioning inside the VE SDE


def test_edm_coefficients_match_karras_table_1():
    model = tiny_score(precond="edm", sigma_data=0.5)
    sigma = torch.tensor([0.02, 0.5, 9.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = model.coefficients(sigma)
    sd2 = 0.25
    assert torch.allclose(c_skip, sd2 / (sigma**2 + sd2))
    assert torch.allclose(c_out, sigma * 0.5 / (sigma**2 + sd2).sqrt())
    assert torch.allclose(c_in, 1 / (sigma**2 + sd2).sqrt())
    assert torch.allclose(c_noise, sigma.log() / 4)
    # unit variance: Var[c_in x_t] = 1 for data of std sigma_data; the ideal F has unit variance too
    assert torch.allclose(c_in**2 * (sd2 + sigma**2), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(model.loss_weight(sigma), 1 / c_out**2)


@pytest.mark.parametrize("precond", ["song", "edm"])
def test_score_and_denoiser_agree_by_tweedie(precond):
    model = tiny_score(num_classes=10, precond=precond)
    x, t, labels = 3 * randn(3, 1, 28, 28), torch.tensor([1e-3, 0.3, 1.0]), torch.tensor([1, 2, 3])
    sigma = model.sde.marginal_std(t.double())
    for w in (1.0, 2.5):
        score = model(x, t, labels, guidance=w)
        denoised = model.denoise(x, sigma, labels, guidance=w)
        # D = x + sigma^2 s, the Tweedie estimate, with and without guidance (D is affine in s)
        assert torch.allclose(denoised, x + sigma.float()[:, None, None, None] ** 2 * score, rtol=1e-4, atol=1e-4)
    assert torch.allclose(model.denoise(x[:1], 0.7, labels[:1]), model.denoise(x[:1], torch.tensor([0.7]), labels[:1]), atol=1e-5)


def test_edm_denoiser_is_the_preconditioned_network():
    model = tiny_score(num_classes=10, precond="edm")
    x, sigma, labels = randn(2, 1, 28, 28), torch.tensor([0.1, 5.0], dtype=torch.float64), torch.tensor([4, 7])
    c_skip, c_out, c_in, c_noise = (c.float()[:, None, None, None] for c in model.coefficients(sigma))
    expected = c_skip * x + c_out * model.net(c_in * x, c_noise.flatten(), labels)
    assert torch.allclose(model.denoise(x, sigma, labels), expected, atol=1e-5)


def test_preconditioning_travels_in_the_config(tmp_path):
    model = tiny_score(num_classes=10, precond="edm", sigma_data=0.4)
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["precond"] == "edm" and config["sigma_data"] == 0.4
    back = ScoreModel.from_pretrained(tmp_path / "m")
    x = randn(2, 1, 28, 28)
    assert torch.equal(back.denoise(x, 1.0, torch.tensor([1, 2])), model.denoise(x, 1.0, torch.tensor([1, 2])))
    # v1 weights have no precond key: they load as "song"
    del config["precond"], config["sigma_data"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    assert ScoreModel.from_pretrained(tmp_path / "m").precond == "song"


def test_bad_preconditioning_is_refused():
    with pytest.raises(ValueError, match="precond must be one of song, edm"):
        ScoreModel(precond="ve")
    with pytest.raises(ValueError, match="sigma_data must be > 0"):
        ScoreModel(precond="edm", sigma_data=0.0)
