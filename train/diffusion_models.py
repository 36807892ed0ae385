"""Train a score model (pixel or latent, conditional or not) by denoising score matching.

Entry points with each model's committed settings: train/pixel_uncond.py, train/pixel_cond.py,
train/latent_cond.py. Every flag below can be overridden on the command line.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from diffusion.autoencoder import AutoEncoder
from diffusion.images import save_grid
from diffusion.losses import dsm_loss, dsm_noise
from diffusion.pipeline import Pipeline
from diffusion.score import ScoreModel
from train.common import finish, setup
from train.loop import TrainConfig, parse_config, train_loop


@dataclass
class ScoreConfig(TrainConfig):
    space: str = "pixel"              # pixel | latent
    conditional: bool = True
    label_dropout: float = 0.1        # probability of the null class, for classifier-free guidance
    t_sampling: str = "uniform"       # uniform (Song et al.; the shipped weights) | log_sigma (more low-noise training)
    channels: str = "16,32,64"
    attention_levels: str = "2"
    embed_dim: int = 128
    context_dim: int = 64
    skip: str = "concat"
    sigma: float = 25.0
    autoencoder: str = "weights/autoencoder"   # latent space only
    sample_every: int = 1000
    channels_last: bool = True


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.split(",") if v.strip())


class DSMTask:
    def __init__(self, model: ScoreModel, label_dropout: float, conditional: bool, t_sampling: str = "uniform"):
        self.eps, self.label_dropout, self.conditional = model.sde.eps, label_dropout, conditional
        self.t_sampling = t_sampling
        self.model = model

    def noise(self, x, y, g):
        return dsm_noise(x, g, self.eps, self.label_dropout if self.conditional else 0.0, self.t_sampling, self.model.sde)

    def loss(self, model, x, y, noise):
        # DDP wraps the ScoreModel; dsm_loss needs .sde / .null_label from the bare module
        bare = getattr(model, "module", model)
        wrapped = _Call(model, bare)
        return dsm_loss(wrapped, x, y if self.conditional else None, noise), {}


class _Call:
    """Calls the (possibly DDP-wrapped) module but exposes the bare ScoreModel's attributes."""

    def __init__(self, model, bare):
        self._model, self._bare = model, bare

    def __call__(self, *a, **k):
        return self._model(*a, **k)

    def __getattr__(self, name):
        return getattr(self._bare, name)


def build_model(cfg: ScoreConfig, in_channels: int, image_size: int) -> ScoreModel:
    return ScoreModel(sigma=cfg.sigma, in_channels=in_channels, image_size=image_size,
                      channels=_ints(cfg.channels), attention_levels=_ints(cfg.attention_levels),
                      num_classes=10 if cfg.conditional else None, embed_dim=cfg.embed_dim,
                      context_dim=cfg.context_dim, skip=cfg.skip)


def main(argv=None, config_cls=ScoreConfig):
    cfg = parse_config(config_cls, argv)
    rank, world, device, (x_train, y_train) = setup(cfg)
    autoencoder = None
    if cfg.space == "latent":
        autoencoder = AutoEncoder.from_pretrained(cfg.autoencoder)
        with torch.inference_mode():  # frozen encoder: latents computed once, scaled to unit variance
            x_train = torch.cat([autoencoder.encode(c) for c in x_train.split(2000)])
        print(f"latents {tuple(x_train.shape)}, std {x_train.std():.3f} (latent_scale {autoencoder.latent_scale:.3f})")
    elif cfg.space != "pixel":
        raise SystemExit(f"--space must be 'pixel' or 'latent', got {cfg.space!r}")
    model = build_model(cfg, x_train.shape[1], x_train.shape[-1])
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters")

    def on_sample(ema_model, step, run_dir):
        pipe = Pipeline(ema_model.cpu(), autoencoder, name=run_dir.name)
        if cfg.conditional:
            images, _ = pipe.generate(torch.arange(10).repeat(10), num_steps=20, guidance=2.0, seed=0)
        else:
            images, _ = pipe.generate(None, num_images=100, num_steps=20, seed=0)
        save_grid(images, run_dir / f"samples-{step:07d}.png", nrow=10)

    ema, history = train_loop(cfg, model, DSMTask(model, cfg.label_dropout, cfg.conditional, cfg.t_sampling), x_train, y_train,
                              on_sample=on_sample, device=device, rank=rank, world=world)
    if rank == 0:
        ema = ema.cpu().to(memory_format=torch.contiguous_format)
        finish(cfg, ema, {"final_loss": history[-1]["loss"] if history else None})


if __name__ == "__main__":
    main()
