"""pixel-cond: class-conditional pixel-space score model. python -m train.pixel_cond [flags]"""
from dataclasses import dataclass

from train.diffusion_models import ScoreConfig, train_score_model


@dataclass
class PixelCondConfig(ScoreConfig):
    out: str = "runs/pixel-cond"
    weights_dir: str = "weights/pixel-cond"
    space: str = "pixel"
    conditional: bool = True
    steps: int = 12000


def main(argv=None):
    train_score_model(argv, config_cls=PixelCondConfig)


if __name__ == "__main__":
    main()
