"""Train a score model (pixel or latent, conditional or not) by denoising score matching.

Entry points with each model's committed settings: train/pixel_uncond.py, train/pixel_cond.py,
train/latent_cond.py. Every flag below can be overridden on the command line.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from diffusion import timelapse
from diffusion.autoencoder import AutoEncoder
from diffusion.images import save_grid
from diffusion.losses import dsm_loss, dsm_noise
from diffusion.pipeline import Pipeline
from diffusion.score import ScoreModel
from train.common import finish, run_command, setup
from train.guides import guide_record, install_guide
from train.loop import TrainConfig, parse_config, train_loop


@dataclass
class ScoreConfig(TrainConfig):
    space: str = "pixel"              # pixel | latent
    conditional: bool = True
    label_dropout: float = 0.1        # probability of the null class, for classifier-free guidance
    t_sampling: str = "edm"           # edm (log-normal std, Karras et al. 2022) | uniform (Song et al.; v1 weights) | log_sigma
    precond: str = "edm"              # edm (Karras et al. 2022 c_skip/c_out/c_in/c_noise) | song (F / std, v1 weights)
    sigma_data: float = 0.31          # std of the training data (MNIST pixels 0.31; unit-variance latents: 1.0)
    p_mean: float = -1.2              # t_sampling=edm: ln std(t) ~ N(p_mean, p_std^2)
    p_std: float = 1.2
    channels: str = "16,32,64"
    attention_levels: str = "2"
    embed_dim: int = 128
    context_dim: int = 64
    skip: str = "concat"
    sigma: float = 25.0
    autoencoder: str = "weights/autoencoder"   # latent space only
    sample_every: int = 500           # a sample grid and a time-lapse frame every N steps
    timelapse_per_digit: int = 4      # time-lapse samples per digit (conditional) / total / 10 (unconditional)
    channels_last: bool = True
    teacher: str = ""                 # knowledge distillation (issue 24): a trained score model's weights folder (e.g.
                                      # weights/pixel-cond) whose score is the regression target (diffusion.losses)
    teacher_weight: float = 1.0       # with --teacher: the teacher's share of the loss (the rest is plain DSM)
    guide_step: int = 0               # unconditional: keep the EMA weights at this step (a multiple of sample_every) as
                                      # the autoguidance guide, shipped as <weights_dir>-guide (diffusion.autoguidance)


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.split(",") if v.strip())


class DSMTask:
    def __init__(self, model: ScoreModel, label_dropout: float, conditional: bool, t_sampling: str = "uniform",
                 p_mean: float = -1.2, p_std: float = 1.2, teacher: ScoreModel | None = None,
                 teacher_weight: float = 1.0):
        self.eps, self.label_dropout, self.conditional = model.sde.eps, label_dropout, conditional
        self.t_sampling, self.p_mean, self.p_std = t_sampling, p_mean, p_std
        self.model, self.teacher, self.teacher_weight = model, teacher, teacher_weight

    def noise(self, x, y, g):
        return dsm_noise(x, g, self.eps, self.label_dropout if self.conditional else 0.0, self.t_sampling, self.model.sde,
                         self.p_mean, self.p_std)

    def loss(self, model, x, y, noise):
        # `model` may be the DDP wrapper (called); sde / null label / loss weight come from the bare ScoreModel
        bare = getattr(model, "module", model)
        return dsm_loss(model, x, y if self.conditional else None, noise, model=bare, teacher=self.teacher,
                        teacher_weight=self.teacher_weight), {}


def load_teacher(cfg: ScoreConfig, student: ScoreModel, device) -> ScoreModel:
    """The frozen teacher of --teacher, checked against the student: same noise process, channels, size, labels."""
    if not 0.0 <= cfg.teacher_weight <= 1.0:
        raise SystemExit(f"--teacher-weight must be in [0, 1], got {cfg.teacher_weight}")
    if not (Path(cfg.teacher) / "config.json").is_file():
        raise SystemExit(f"--teacher {cfg.teacher}: no config.json there (a score model's weights folder, e.g. "
                         f"weights/pixel-cond)")
    teacher = ScoreModel.from_pretrained(cfg.teacher)
    want = {"sigma": student.sde.sigma, "in_channels": student.in_channels, "image_size": student.image_size,
            "num_classes": student.num_classes}
    have = {"sigma": teacher.sde.sigma, "in_channels": teacher.in_channels, "image_size": teacher.image_size,
            "num_classes": teacher.num_classes}
    if have != want:
        diff = ", ".join(f"{k} {have[k]} (student {want[k]})" for k in want if have[k] != want[k])
        raise SystemExit(f"--teacher {cfg.teacher} does not match the student: {diff}")
    if getattr(teacher, "distilled", None):
        raise SystemExit(f"--teacher {cfg.teacher} is a few-step student, not a score model of every noise level")
    teacher = teacher.to(device).eval().requires_grad_(False)
    return teacher.to(memory_format=torch.channels_last) if cfg.channels_last else teacher


def build_model(cfg: ScoreConfig, in_channels: int, image_size: int) -> ScoreModel:
    return ScoreModel(sigma=cfg.sigma, in_channels=in_channels, image_size=image_size,
                      channels=_ints(cfg.channels), attention_levels=_ints(cfg.attention_levels),
                      num_classes=10 if cfg.conditional else None, embed_dim=cfg.embed_dim,
                      context_dim=cfg.context_dim, skip=cfg.skip, precond=cfg.precond, sigma_data=cfg.sigma_data)


def ema_from_checkpoint(run_dir: Path, ckpt: Path, which: str = "ema") -> ScoreModel:
    """The EMA weights of a training checkpoint (run_dir/ckpt-NNNNNNNN/state.safetensors, or a copy of that folder
    elsewhere) in the architecture of run_dir/config.json; loaded with the project's safetensors-only checks.
    which="model": the raw (optimised) weights of the same checkpoint instead."""
    if which not in ("ema", "model"):
        raise ValueError(f"which must be 'ema' or 'model', got {which!r}")
    from train.checkpoints import checkpoint_weights
    cfg = json.loads((Path(run_dir) / "config.json").read_text())
    known = ScoreConfig.__dataclass_fields__
    cfg = ScoreConfig(**{k: v for k, v in cfg.items() if k in known})
    in_channels, size = (1, 28) if cfg.space == "pixel" else AutoEncoder.from_pretrained(cfg.autoencoder).latent_shape[:2]
    model = build_model(cfg, in_channels, size)
    model.load_state_dict(checkpoint_weights(ckpt, f"{which}."), strict=True)
    return model.eval()


def train_score_model(argv=None, config_cls=ScoreConfig):
    """Parse flags into config_cls, train, save the EMA weights and the record (each model script's main)."""
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
    if cfg.guide_step and (cfg.conditional or not cfg.sample_every or cfg.guide_step % cfg.sample_every
                           or cfg.guide_step >= cfg.steps):
        raise SystemExit(f"--guide-step {cfg.guide_step}: autoguidance is for unconditional models, at a multiple of "
                         f"--sample-every ({cfg.sample_every}) below --steps ({cfg.steps})")
    model = build_model(cfg, x_train.shape[1], x_train.shape[-1])
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters")

    def on_sample(ema_model, step, run_dir, history):
        """A 10x10 grid (20 steps) and a time-lapse frame (the same prior noise and labels every time)."""
        ema_model = copy.deepcopy(ema_model).to(memory_format=torch.contiguous_format)   # on the training device
        decoder = autoencoder.to(next(ema_model.parameters()).device) if autoencoder is not None else None
        pipe = Pipeline(ema_model, decoder, name=run_dir.name)
        if cfg.conditional:
            images, _ = pipe.generate(torch.arange(10).repeat(10), num_steps=20, guidance=2.0, seed=0)
        else:
            images, _ = pipe.generate(None, num_images=100, num_steps=20, seed=0)
        save_grid(images, run_dir / f"samples-{step:07d}.png", nrow=10)
        labels = torch.arange(10).repeat_interleave(cfg.timelapse_per_digit) if cfg.conditional else None
        frame, _ = pipe.generate(labels, num_images=10 * cfg.timelapse_per_digit, num_steps=10, seed=0)
        recent = [h["loss"] for h in history[-10:]]
        wall = history[-1]["wall_s"] if history else 0.0
        timelapse.record(run_dir / timelapse.FILENAME, frame, labels, step, wall, sum(recent) / max(1, len(recent)))
        if cfg.guide_step and step == cfg.guide_step:      # the autoguidance guide: this step's EMA weights
            ema_model.save_pretrained(run_dir / "guide")
            (run_dir / "guide" / "step.json").write_text(json.dumps({"step": step, "wall_s": wall}))

    teacher = load_teacher(cfg, model, device) if cfg.teacher else None
    task = DSMTask(model, cfg.label_dropout, cfg.conditional, cfg.t_sampling, cfg.p_mean, cfg.p_std, teacher,
                   cfg.teacher_weight)
    ema, history = train_loop(cfg, model, task, x_train, y_train, on_sample=on_sample, device=device, rank=rank, world=world)
    if rank == 0:
        ema = ema.cpu().to(memory_format=torch.contiguous_format)
        finish(cfg, ema, {"final_loss": history[-1]["loss"] if history else None,
                          "total_wall_s": history[-1]["wall_s"] if history else None},
               extra_files=[Path(cfg.out) / timelapse.FILENAME])
        guide_dir = Path(cfg.out) / "guide"
        if cfg.guide_step and cfg.weights_dir and not (guide_dir / "model.safetensors").is_file():
            print(f"--guide-step {cfg.guide_step}: {guide_dir} holds no guide (this run reached that step without "
                  f"saving one), so {cfg.weights_dir} is unguided. Install one with: python -m train.export_guide "
                  f"--run {cfg.out} --ckpt <a checkpoint of this run> --model {cfg.weights_dir}")
        elif cfg.guide_step and cfg.weights_dir:
            guide = ScoreModel.from_pretrained(str(guide_dir)).eval()
            at = json.loads((guide_dir / "step.json").read_text())
            weights = Path(cfg.weights_dir)
            install_guide(guide, weights, weights.parent / f"{weights.name}-guide",
                          guide_record(Path(cfg.out), at["step"], at["wall_s"], weights.name, run_command(),
                                       sum(p.numel() for p in guide.parameters())))


def main(argv=None):
    train_score_model(argv)


if __name__ == "__main__":
    main()
