"""pixel-uncond: unconditional pixel-space score model. python -m train.pixel_uncond [flags]"""
from dataclasses import dataclass

from train.diffusion_models import ScoreConfig, train_score_model


@dataclass
class PixelUncondConfig(ScoreConfig):
    out: str = "runs/pixel-uncond"
    weights_dir: str = "weights/pixel-uncond"
    space: str = "pixel"
    conditional: bool = False
    steps: int = 9000                 # v3: 9000 steps of 128 (19 epochs), EDM recipe, 109 min on one CPU thread
    batch_size: int = 128
    guide_step: int = 500             # the autoguidance guide: this run's EMA weights at step 500 (bench/results/autoguidance.md)


def main(argv=None):
    train_score_model(argv, config_cls=PixelUncondConfig)


if __name__ == "__main__":
    main()
