"""pixel-uncond: unconditional pixel-space score model. python -m train.pixel_uncond [flags]"""
from dataclasses import dataclass

from train.diffusion_models import ScoreConfig, train_score_model


@dataclass
class PixelUncondConfig(ScoreConfig):
    out: str = "runs/pixel-uncond"
    weights_dir: str = "weights/pixel-uncond"
    space: str = "pixel"
    conditional: bool = False
    steps: int = 5000


def main(argv=None):
    train_score_model(argv, config_cls=PixelUncondConfig)


if __name__ == "__main__":
    main()
