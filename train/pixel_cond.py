"""pixel-cond: class-conditional pixel-space score model. python -m train.pixel_cond [flags]"""
from dataclasses import dataclass

from train.diffusion_models import ScoreConfig, main


@dataclass
class PixelCondConfig(ScoreConfig):
    out: str = "runs/pixel-cond"
    weights_dir: str = "weights/pixel-cond"
    space: str = "pixel"
    conditional: bool = True
    steps: int = 12000


if __name__ == "__main__":
    main(config_cls=PixelCondConfig)
