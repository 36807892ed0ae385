"""Train the latent autoencoder: python -m train.autoencoder [--perceptual lpips|none]

The loss is MSE + --lpips-weight * LPIPS(alex). LPIPS needs torchvision's ImageNet AlexNet weights
(alexnet-owt-7be5be79.pth in $TORCH_HOME/hub/checkpoints); offline without them the script stops and
says so. `--perceptual none` trains with MSE alone (the shipped weights' loss: see the model card).
After training, `latent_scale` = std of the training latents is measured and stored in the config.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from diffusion.autoencoder import AutoEncoder
from diffusion.losses import autoencoder_loss
from train.common import finish, setup
from train.loop import TrainConfig, parse_config, train_loop


@dataclass
class AutoEncoderConfig(TrainConfig):
    out: str = "runs/autoencoder"
    weights_dir: str = "weights/autoencoder"
    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    ema_decay: float = 0.998
    perceptual: str = "lpips"         # lpips | none
    lpips_weight: float = 0.1
    hidden: int = 32
    latent_channels: int = 4


def make_lpips():
    """lpips.LPIPS(net='alex'); a clear error when the ImageNet backbone cannot be had offline."""
    try:
        import lpips
        net = lpips.LPIPS(net="alex", verbose=False)
    except Exception as e:  # noqa: BLE001
        raise SystemExit(
            f"LPIPS could not be built ({type(e).__name__}: {e}).\n"
            "LPIPS needs torchvision's ImageNet AlexNet weights, a download that fails offline. Either:\n"
            "  * put alexnet-owt-7be5be79.pth in $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints), or\n"
            "  * train with MSE only: python -m train.autoencoder --perceptual none") from None
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


class AutoEncoderTask:
    def __init__(self, perceptual, weight):
        self.perceptual, self.weight = perceptual, weight

    def noise(self, x, y, g):
        return {}

    def loss(self, model, x, y, noise):
        loss, _, parts = autoencoder_loss(model, x, self.perceptual, self.weight)
        return loss, {k: float(v) for k, v in parts.items()}


@torch.inference_mode()
def measure_latent_scale(model: AutoEncoder, x: torch.Tensor) -> float:
    z = torch.cat([model.encode(chunk, scaled=False) for chunk in x.split(2000)])
    return float(z.std())


def main(argv=None):
    cfg = parse_config(AutoEncoderConfig, argv)
    if cfg.perceptual not in ("lpips", "none"):
        raise SystemExit(f"--perceptual must be 'lpips' or 'none', got {cfg.perceptual!r}")
    perceptual = make_lpips() if cfg.perceptual == "lpips" else None
    rank, world, device, (x_train, y_train) = setup(cfg)
    if perceptual is not None:
        perceptual.to(device)
    model = AutoEncoder(cfg.latent_channels, cfg.hidden)
    ema, _ = train_loop(cfg, model, AutoEncoderTask(perceptual, cfg.lpips_weight), x_train, y_train,
                        device=device, rank=rank, world=world)
    if rank == 0:
        ema = ema.cpu()
        scale = measure_latent_scale(ema, x_train)
        final = AutoEncoder(cfg.latent_channels, cfg.hidden, latent_scale=scale)
        final.load_state_dict(ema.state_dict())
        loss_name = "MSE + %.3g * LPIPS(alex)" % cfg.lpips_weight if perceptual is not None else "MSE only"
        finish(cfg, final.eval(), {"latent_scale": scale, "loss": loss_name})


if __name__ == "__main__":
    main()
