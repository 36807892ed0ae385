"""Distribution matching distillation (DMD) of a few-step student: fine-tune it so that its samples' distribution,
not its path, matches the guided teacher's (the math in diffusion/dmd.py).

    python -m train.dmd --student weights/pixel-cond-distilled-1step --teacher weights/pixel-cond [flags]

Two networks train together (DMD2's two time-scale update):
    generator   the student run by its own sampler (ddim on its grid, ancestral with --eta between steps: 0.5 for
                the 2-step student's default, 1 for the 4-step's euler_ancestral), moved along the DMD direction
                (D_fake - D_real) / mean|x - D_real| at noise levels >= --dmd-sigma-min; its loss is the one
                train_loop optimizes (--lr, schedule, EMA), back-propagated through every step
    fake        a w-conditioned denoiser of the generator's own samples, trained with DSM on them as they change,
                --fake-updates times per generator step (its own AdamW at --fake-lr), so that it keeps up; it starts
                as --fake-init (stage 1's guidance student, a denoiser of the guided teacher, so the DMD direction
                starts near zero) or, without it, as the teacher with a new, zero w-embedding
`--anchor-weight a` adds a ||G(z) - G_0(z)||^2, G_0 the starting student (0: off, one network call less per step).
`--gan-weight g` adds DMD2's GAN term: a head on the fake's bottleneck (diffusion.dmd.BottleneckHead; `--gan-features
both` adds one on its full-resolution decoder features, MultiScaleHead) learns, in each
fake update, to tell noised real digits (the run's MNIST batch, same labels, same w) from noised generator samples
(weight --gan-d-weight beside the fake's DSM loss), and the generator gets g softplus(-D(G(z) + sigma eps)).
The run is a train_loop run (checkpoints of both networks, --resume, EMA, --deadline; the fake's optimizer state is not
checkpointed: a resumed run restarts its moments); the EMA generator goes to --weights-dir with `distilled.dmd` in its
config and the guidance range narrowed to the one DMD trained on.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from diffusion.distill import make_student, weighted_error
from diffusion.dmd import (GAN_FEATURES, check_student_pair, dmd_direction, dmd_loss, gan_d_loss, gan_g_loss, gan_logits,
                           make_gan_head, student_generate)
from diffusion.images import save_grid
from diffusion.pipeline import Pipeline
from diffusion.score import ScoreModel
from diffusion.hub import DEFAULT_WEIGHTS_DIR
from train.common import RECORDS, finish, run_command, setup
from train.distill import _portable
from train.loop import TrainConfig, parse_config, train_loop


@dataclass
class DMDConfig(TrainConfig):
    """Distribution matching distillation of a few-step student (python -m train.dmd)."""
    out: str = "runs/pixel-cond-distilled-1step-dmd"
    weights_dir: str = ""
    student: str = "weights/pixel-cond-distilled-1step"   # the generator's starting point: a few-step student
    eta: float = 0.0                        # the generator's ancestral noise between its steps (ddim's eta)
    teacher: str = "weights/pixel-cond"                   # the real score: its guided denoiser at the student's w
    fake_init: str = ""                     # a guidance-embedded denoiser of the teacher (train.distill's stage 1)
    steps: int = 1000
    lr: float = 2e-5                        # the generator's learning rate (train_loop's schedule)
    fake_lr: float = 1e-4                   # the fake denoiser's (its own AdamW, constant after --warmup)
    fake_updates: int = 4                   # fake updates per generator step, each on fresh generator samples (TTUR)
    warmup: int = 50
    ema_decay: float = 0.99
    ckpt_every: int = 100
    log_every: int = 25
    w_min: float = 1.0                      # w ~ U[w_min, w_max]: the generator's and the teacher's guidance
    w_max: float = 3.0
    p_mean: float = -1.2                    # both losses' noise: ln sigma ~ N(p_mean, p_std^2), clamped to the SDE's
    p_std: float = 1.2
    dmd_sigma_min: float = 0.05             # the generator's loss: no noise level below this (the fake's error there
                                            # is pixel noise, and the generator learns it as grain)
    anchor_weight: float = 0.25
    gan_weight: float = 0.0                 # the generator's GAN term (DMD2: 3e-3 beside the same mean-reduced DMD loss)
    gan_d_weight: float = 1.0               # the head's loss beside the fake's DSM loss (per-image sums: ~10 at start)
    gan_features: str = "bottleneck"        # the head reads the bottleneck, or "both": that and the full-res features
    sample_guidance: float = 1.5            # w of the 10x10 grid written at the end (the shipped default)
    channels_last: bool = True


class GeneratorAndFake(torch.nn.Module):
    """The two trained networks as one module: train_loop's optimizer, EMA and checkpoints then hold both."""

    def __init__(self, generator: ScoreModel, fake: ScoreModel, head: torch.nn.Module | None = None):
        super().__init__()
        self.generator, self.fake, self.head = generator, fake, head


class DMDTask:
    """One generator step (DMD2's two time-scale update): first --fake-updates DSM steps of the fake denoiser on fresh
    generator samples (no gradient through G; the task's own optimizer), then the generator's DMD loss (+ the anchor),
    the loss train_loop back-propagates. The fake's parameters get no gradient from that loss."""

    def __init__(self, teacher, anchor, cfg: DMDConfig, steps: int = 1):
        self.teacher, self.anchor, self.cfg, self.sde, self.steps = teacher, anchor, cfg, teacher.sde, steps
        self.fake_opt, self.fake_steps = None, 0

    def generate(self, student, z, y, w, step_noise):
        return student_generate(student, z, y, w, self.cfg.eta, step_noise)

    def _sigma(self, shape, g, floor):
        ln_sigma = self.cfg.p_mean + self.cfg.p_std * torch.randn(shape, generator=g, dtype=torch.float64)
        return ln_sigma.exp().clamp(max(floor, self.sde.std_min), self.sde.std_max)

    def noise(self, x, y, g):
        b, k, c, m = x.shape[0], self.cfg.fake_updates, self.cfg, self.steps - 1
        return {"z": torch.randn(x.shape, generator=g), "w": c.w_min + (c.w_max - c.w_min) * torch.rand(b, generator=g),
                # (B, N - 1, ...) and (B, k, N - 1, ...): the ancestral steps' noise of an N-step generator
                "steps": torch.randn(b, m, *x.shape[1:], generator=g),
                "fake_steps": torch.randn(b, k, m, *x.shape[1:], generator=g),
                "sigma": self._sigma(b, g, c.dmd_sigma_min), "eps": torch.randn(x.shape, generator=g),
                # (B, k, ...): the k fake updates' generator noise, w, noise level and DSM noise
                "fake_z": torch.randn(b, k, *x.shape[1:], generator=g),
                "fake_w": c.w_min + (c.w_max - c.w_min) * torch.rand(b, k, generator=g),
                "fake_sigma": self._sigma((b, k), g, 0.0), "fake_eps": torch.randn(b, k, *x.shape[1:], generator=g),
                # the GAN term's noise of the real and the generated image in each fake update (drawn only when on)
                **({"gan_real_eps": torch.randn(b, k, *x.shape[1:], generator=g),
                    "gan_fake_eps": torch.randn(b, k, *x.shape[1:], generator=g)} if c.gan_weight > 0 else {})}

    def fake_loss(self, gen, fake, z, y, w, sigma, eps, step_noise=None):
        """lambda(sigma) ||D_fake(x + sigma eps) - x||^2 on generator samples x = G(z) (detached); (loss, x)."""
        with torch.no_grad():
            clean = self.generate(gen, z, y, w, step_noise)
        noisy = clean + sigma.to(clean.dtype).view(-1, 1, 1, 1) * eps
        return weighted_error(fake, fake.denoise(noisy, sigma, y, guidance=w), clean, sigma), clean

    def head_loss(self, fake, head, real, generated, y, w, sigma, real_eps, fake_eps):
        """The GAN head's loss: real digits and generator samples, both noised at sigma and seen at the same w."""
        s = sigma.to(real.dtype).view(-1, 1, 1, 1)
        return gan_d_loss(gan_logits(fake, head, real + s * real_eps, sigma, y, w),
                          gan_logits(fake, head, generated + s * fake_eps, sigma, y, w))

    def update_fake(self, gen, fake, y, noise, device, dtype, real=None, head=None):
        """--fake-updates DSM steps of the fake (with the GAN head's loss on `real` when `head` is given); the losses."""
        if self.fake_opt is None:
            params = [*fake.parameters(), *(head.parameters() if head is not None else ())]
            self.fake_opt = torch.optim.AdamW(params, lr=self.cfg.fake_lr)
        losses, self.head_losses = [], []
        for j in range(self.cfg.fake_updates):
            for group in self.fake_opt.param_groups:
                group["lr"] = self.cfg.fake_lr * min(1.0, (self.fake_steps + 1) / max(1, self.cfg.warmup))
            w, sigma = noise["fake_w"][:, j].to(device), noise["fake_sigma"][:, j].to(device)
            loss, generated = self.fake_loss(gen, fake, noise["fake_z"][:, j].to(device, dtype), y, w, sigma,
                                             noise["fake_eps"][:, j].to(device, dtype),
                                             noise["fake_steps"][:, j].to(device, dtype))
            losses.append(float(loss.detach()))
            if head is not None:
                d = self.head_loss(fake, head, real, generated, y, w, sigma, noise["gan_real_eps"][:, j].to(device, dtype),
                                   noise["gan_fake_eps"][:, j].to(device, dtype))
                self.head_losses.append(float(d.detach()))
                loss = loss + self.cfg.gan_d_weight * d
            self.fake_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.fake_opt.step()
            self.fake_opt.zero_grad(set_to_none=True)
            self.fake_steps += 1
        return losses

    def loss(self, pair, x, y, noise):
        gen, fake = pair.generator, pair.fake
        head = pair.head if self.cfg.gan_weight > 0 else None
        logs = {}
        if self.cfg.fake_updates and torch.is_grad_enabled():
            logs["fake"] = sum(self.update_fake(gen, fake, y, noise, x.device, x.dtype, x, head)) / self.cfg.fake_updates
            if head is not None:
                logs["gan_d"] = sum(self.head_losses) / len(self.head_losses)
        z, w = noise["z"].to(x.device, x.dtype), noise["w"].to(x.device)
        step_noise = noise["steps"].to(x.device, x.dtype)
        sample = self.generate(gen, z, y, w, step_noise)                          # (B, C, H, W), grads to G
        clean = sample.detach()
        sigma = noise["sigma"].to(x.device)
        noisy = clean + sigma.to(x.dtype).view(-1, 1, 1, 1) * noise["eps"].to(x.device, x.dtype)
        with torch.no_grad():
            real_d = self.teacher.denoise(noisy, sigma, y, guidance=w)            # two halves: the guided teacher
            fake_d = fake.denoise(noisy, sigma, y, guidance=w)
        loss = dmd_loss(sample, dmd_direction(clean, real_d, fake_d))
        logs["dmd"] = float(loss.detach())
        if head is not None:          # through the fake and the head, whose parameters take no gradient from it
            fake.requires_grad_(False), head.requires_grad_(False)
            try:
                seen = sample + sigma.to(x.dtype).view(-1, 1, 1, 1) * noise["eps"].to(x.device, x.dtype)
                gan = gan_g_loss(gan_logits(fake, head, seen, sigma, y, w))
            finally:
                fake.requires_grad_(True), head.requires_grad_(True)
            loss = loss + self.cfg.gan_weight * gan
            logs["gan_g"] = float(gan.detach())
        if self.anchor is not None and self.cfg.anchor_weight > 0:
            with torch.no_grad():
                start = self.generate(self.anchor, z, y, w, step_noise)
            anchor = (sample - start).square().mean()
            loss = loss + self.cfg.anchor_weight * anchor
            logs["anchor"] = float(anchor.detach())
        return loss, logs


def load_fake(cfg: DMDConfig, teacher: ScoreModel, student: ScoreModel) -> ScoreModel:
    """The fake denoiser's start: --fake-init (checked: w an input, no step grid, the teacher's shape), else the
    teacher with a zero w-embedding (train.distill's make_student)."""
    if not cfg.fake_init:
        return make_student(teacher, {**student.distilled, "steps": None})
    if not (Path(cfg.fake_init) / "config.json").is_file():
        raise SystemExit(f"--fake-init {cfg.fake_init}: not a weights folder (config.json and model.safetensors)")
    fake = ScoreModel.from_pretrained(cfg.fake_init)
    if not fake.guidance_embed or (fake.distilled or {}).get("steps"):
        raise SystemExit(f"--fake-init {cfg.fake_init}: needs a guidance-embedded denoiser with no step grid "
                         "(train.distill's stage-1 student), not a teacher or a few-step student")
    if dict(fake._hub_mixin_config, distilled=None) != dict(student._hub_mixin_config, distilled=None):
        raise SystemExit(f"--fake-init {cfg.fake_init}: its architecture is not the student's")
    return fake


def generator_from_checkpoint(run_dir: Path, ckpt: Path) -> ScoreModel:
    """The EMA generator of a DMD run's checkpoint (ckpt/state.safetensors, keys "ema.generator.*") in the architecture
    of the run's --student (run_dir/config.json), with the project's safetensors-only checks: a student as it trains."""
    from train.checkpoints import checkpoint_weights
    model = ScoreModel.from_pretrained(json.loads((Path(run_dir) / "config.json").read_text())["student"])
    model.load_state_dict(checkpoint_weights(ckpt, "ema.generator."), strict=True)
    return model.eval()


def making_of(cfg: DMDConfig, history: list[dict], steps: int = 1) -> dict:
    """What the new student's record adds to finish's: the stages that made the starting student (from its record in
    train/records/, for shipped weights; each with its run's command) and this run as a last stage, "dmd"; the
    progressive run's config as `distill_config` (the card's loss line), `dmd` naming this run's settings."""
    start = Path(cfg.student)
    path = RECORDS / f"{start.name}.json"
    earlier = {}
    if start.resolve().parent == DEFAULT_WEIGHTS_DIR.resolve() and path.is_file():
        earlier = json.loads(path.read_text())
    stages = [{**st, "command": st.get("command") or earlier.get("command")} for st in earlier.get("stages", [])
              if st["stage"] != "dmd"]     # a rerun (build_all.sh --resume) reads its own earlier record: one dmd stage
    made = [k for k, st in enumerate(stages) if st.get("student_steps") == steps]
    stages = stages[:made[-1] + 1] if made else stages     # later rounds only used this student as their teacher
    tail = [h["loss"] for h in history[-max(1, len(history) // 10):]]
    final_loss = round(sum(tail) / len(tail), 5) if tail else None
    wall = history[-1]["wall_s"] if history else 0.0
    stages.append({"stage": "dmd", "steps": int(cfg._run_info.get("steps_done", cfg.steps)), "student_steps": steps,
                   "final_loss": final_loss, "wall_s": wall, "command": run_command()})
    return {"stages": stages, "ship_steps": steps, "final_loss": final_loss,
            "total_wall_s": round(sum(st.get("wall_s") or 0.0 for st in stages), 1),
            "distill_config": earlier.get("distill_config") or earlier.get("config", {}),
            "dmd": {"w_range": [cfg.w_min, cfg.w_max], "lr": cfg.lr, "fake_lr": cfg.fake_lr,
                    "fake_updates": cfg.fake_updates, "anchor_weight": cfg.anchor_weight,
                    **({"gan_weight": cfg.gan_weight, "gan_d_weight": cfg.gan_d_weight, "gan_features": cfg.gan_features}
                       if cfg.gan_weight > 0 else {}),
                    "dmd_sigma_min": cfg.dmd_sigma_min, "eta": cfg.eta, "batch_size": cfg.batch_size, "steps": cfg.steps,
                    "fake_init": cfg.fake_init or "the teacher, a zero w-embedding"}}


def main(argv=None):
    cfg = parse_config(DMDConfig, argv)
    if not 0 <= cfg.eta <= 1:
        raise SystemExit(f"--eta must be in [0, 1], got {cfg.eta}")
    if not 0 <= cfg.w_min <= cfg.w_max:
        raise SystemExit(f"need 0 <= --w-min <= --w-max, got {cfg.w_min}, {cfg.w_max}")
    student, teacher = ScoreModel.from_pretrained(cfg.student), ScoreModel.from_pretrained(cfg.teacher)
    try:
        check_student_pair(student, teacher)
    except ValueError as e:
        raise SystemExit(f"--student {cfg.student} / --teacher {cfg.teacher}: {e}") from None
    lo, hi = student.distilled["guidance_range"]
    if cfg.w_min < lo or cfg.w_max > hi:
        raise SystemExit(f"--w-min/--w-max [{cfg.w_min}, {cfg.w_max}] leave the student's range [{lo}, {hi}]")
    fake = load_fake(cfg, teacher, student)
    _, world, device, (x_train, y_train) = setup(cfg)
    if world > 1:
        raise SystemExit("train.dmd runs as one process")
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    frozen = [m.to(device, memory_format=fmt).eval().requires_grad_(False) for m in (teacher, copy.deepcopy(student))]
    anchor = frozen[1] if cfg.anchor_weight > 0 else None
    if cfg.gan_weight < 0 or cfg.gan_d_weight < 0:
        raise SystemExit(f"--gan-weight and --gan-d-weight must be >= 0, got {cfg.gan_weight}, {cfg.gan_d_weight}")
    if cfg.gan_features not in GAN_FEATURES:
        raise SystemExit(f"--gan-features must be one of {', '.join(GAN_FEATURES)}, got {cfg.gan_features!r}")
    head = make_gan_head(fake, cfg.gan_features) if cfg.gan_weight > 0 else None
    pair = GeneratorAndFake(student, fake, head).to(device, memory_format=fmt)
    steps = int(student.distilled["steps"])
    ema, history = train_loop(cfg, pair, DMDTask(frozen[0], anchor, cfg, steps), x_train, y_train, device=device)
    trained = _portable(ema.generator).float()
    distilled = {**trained.distilled, "guidance_range": [float(cfg.w_min), float(cfg.w_max)],
                 "dmd": {"teacher": Path(cfg.teacher).name, "start": Path(cfg.student).name,
                         "steps": int(cfg._run_info.get("steps_done", cfg.steps)), "anchor_weight": cfg.anchor_weight,
                         "eta": cfg.eta, "fake_updates": cfg.fake_updates,
                         **({"gan_weight": cfg.gan_weight, "gan_features": cfg.gan_features} if cfg.gan_weight > 0 else {})}}
    generator = ScoreModel(**{**dict(trained._hub_mixin_config), "distilled": distilled})
    generator.load_state_dict(trained.state_dict())
    w = min(max(cfg.sample_guidance, cfg.w_min), cfg.w_max)
    images, _ = Pipeline(generator, name="dmd", precision="fp32").generate(
        torch.arange(10).repeat_interleave(10), sampler="ddim", num_steps=steps, guidance=w, seed=0, eta=cfg.eta)
    save_grid(images, Path(cfg.out) / "samples.png", nrow=10)
    finish(cfg, generator, making_of(cfg, history, steps))
    return generator, history


if __name__ == "__main__":
    main()
