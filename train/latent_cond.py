"""latent-cond: class-conditional score model on the autoencoder's scaled latents. python -m train.latent_cond"""
from dataclasses import dataclass

from train.diffusion_models import ScoreConfig, train_score_model


@dataclass
class LatentCondConfig(ScoreConfig):
    out: str = "runs/latent-cond"
    weights_dir: str = "weights/latent-cond"
    space: str = "latent"
    conditional: bool = True
    channels: str = "32,64"
    attention_levels: str = "0,1"
    steps: int = 8000
    sigma_data: float = 1.0           # the latents are scaled to unit variance (AutoEncoder.latent_scale)


def main(argv=None):
    train_score_model(argv, config_cls=LatentCondConfig)


if __name__ == "__main__":
    main()
