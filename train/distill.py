"""pixel-cond-distilled: guided progressive distillation of pixel-cond into 4-, 2- and 1-step students with the
guidance weight as an input (Meng et al. 2023; Salimans & Ho 2022; the math in diffusion/distill.py).

    python -m train.distill --teacher weights/pixel-cond [flags]

Stages, each a train_loop run folder under --out (checkpoints, resume, EMA), run in order:
    guidance/          stage 1: student D_s(x; sigma, c, w) matches the teacher's guided D_T (--stage1-steps; 0 skips it,
                       and the rounds then call the guided teacher, two network halves per call)
    round-T-to-T/2/    stage 2: one student step = two teacher DDIM steps on the T-step grid, T = --grid-steps, then
    ...                T/2, ... down to --end-steps; each round starts from the previous round's EMA student
`--start-from DIR` continues the chain from an existing N-step student (e.g. the shipped 4-step one): stage 1 and every
round that makes more than N steps are skipped, and the later rounds are trained again from it (longer, say).
A finished stage holds student/ (its EMA weights, save_pretrained layout) and stage.json (loss, wall time) and is
skipped when the command is run again; `--resume` continues an interrupted stage from its last checkpoint.
At the end the --ship-steps student goes to --weights-dir (with train.common.finish: record, optional push) and each
--export-steps student to {weights_dir}-{N}step.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from diffusion.distill import (distilled_config, guidance_target, make_student, student_sigmas, two_step_target,
                               weighted_error)
from diffusion.images import save_grid
from diffusion.pipeline import Pipeline
from diffusion.score import ScoreModel
from diffusion.hub import DEFAULT_WEIGHTS_DIR
from train.common import RECORDS, finish, setup
from train.loop import TrainConfig, parse_config, save_weights, train_loop


@dataclass
class DistillConfig(TrainConfig):
    """Guided progressive distillation of a class-conditional score model (python -m train.distill)."""
    out: str = "runs/pixel-cond-distilled"
    weights_dir: str = "weights/pixel-cond-distilled"
    teacher: str = "weights/pixel-cond"     # the teacher's weights folder (save_pretrained layout)
    start_from: str = ""                    # an N-step student of this teacher's grid: only the rounds below N run
    stage1_steps: int = 1000                # guidance distillation (0: skip)
    steps: int = 500                        # optimizer steps of each progressive round ...
    round_steps: str = ""                   # ... or one count per round, first round first, e.g. "300,400,600,800"
    grid_steps: int = 16                    # T: the first round's teacher takes T DDIM steps, its student T/2
    end_steps: int = 1                      # the last round's student step count
    ship_steps: int = 4                     # the student written to --weights-dir
    export_steps: str = "2,1"               # further students, each to {weights_dir}-{N}step ("" for none)
    w_min: float = 0.0                      # guidance weights w ~ U[w_min, w_max], an input of the student
    w_max: float = 4.0
    rho: float = 7.0                        # Karras grid exponent
    p_mean: float = -1.2                    # stage 1: ln sigma ~ N(p_mean, p_std^2), clamped to [std(eps), std(1)]
    p_std: float = 1.2
    stage1_grid_fraction: float = 0.5       # stage 1: this fraction of sigmas drawn from the first round's grid instead
    lr: float = 5e-4
    warmup: int = 50
    ema_decay: float = 0.995
    ckpt_every: int = 100
    log_every: int = 25
    sample_guidance: float = 2.0            # w of the 10x10 sample grid written at the end of each stage
    channels_last: bool = True              # NHWC convolutions: measured 13-16% faster per step on CPU


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def round_plan(cfg: DistillConfig, start_steps: int | None = None) -> list[tuple[int, int, int]]:
    """[(teacher steps, student steps, optimizer steps)] for every progressive round; validates the step counts.
    start_steps: the chain starts from an existing student with that many steps (--start-from), so the rounds are
    start_steps -> start_steps/2 -> ... -> end_steps, and --round-steps counts only those."""
    if cfg.end_steps < 1 or cfg.grid_steps < 2 * cfg.end_steps:
        raise ValueError(f"--grid-steps ({cfg.grid_steps}) must be at least twice --end-steps ({cfg.end_steps})")
    halvings = math.log2(cfg.grid_steps / cfg.end_steps)
    if halvings != int(halvings):
        raise ValueError(f"--grid-steps ({cfg.grid_steps}) must be --end-steps ({cfg.end_steps}) times a power of 2")
    counts = [cfg.grid_steps // 2 ** k for k in range(int(halvings) + 1)]   # T, T/2, ..., end
    if start_steps is not None:
        if start_steps not in counts[1:-1]:
            raise ValueError(f"--start-from: a {start_steps}-step student is not one this plan continues from "
                             f"(its rounds make {counts[1:]}; the start must be one of {counts[1:-1]})")
        counts = counts[counts.index(start_steps):]
    per_round = _ints(cfg.round_steps) or [cfg.steps] * (len(counts) - 1)
    if len(per_round) != len(counts) - 1 or min(per_round) < 1:
        raise ValueError(f"--round-steps needs {len(counts) - 1} positive counts (rounds "
                         f"{', '.join(f'{a}->{b}' for a, b in zip(counts, counts[1:]))}), got {cfg.round_steps!r}")
    made = counts[1:] if start_steps is None else counts       # a --start-from student can be shipped as it is
    for n in [cfg.ship_steps, *_ints(cfg.export_steps)]:
        if n not in made:
            raise ValueError(f"no round produces a {n}-step student (the rounds make {counts[1:]})")
    if not 0 <= cfg.stage1_grid_fraction <= 1:
        raise ValueError(f"--stage1-grid-fraction must be in [0, 1], got {cfg.stage1_grid_fraction}")
    if not 0 <= cfg.w_min <= cfg.w_max:
        raise ValueError(f"need 0 <= --w-min <= --w-max, got {cfg.w_min}, {cfg.w_max}")
    return [(a, b, s) for a, b, s in zip(counts, counts[1:], per_round)]


class GuidanceTask:
    """Stage 1: lambda(sigma) || D_s(x; sigma, c, w) - D_T(x; sigma, c, w) ||^2, sigma from the teacher's log-normal or,
    with probability grid_fraction, uniform over the T noise levels where round 1 will call this student (the log-normal
    alone puts ~0.2% of its mass near std(1) = 9.85, where every sample starts)."""

    def __init__(self, teacher, cfg: DistillConfig):
        self.teacher, self.cfg, self.sde = teacher, cfg, teacher.sde
        self.grid = student_sigmas(self.sde, cfg.grid_steps, cfg.grid_steps, cfg.rho)[:-1]    # (T,) nonzero levels

    def noise(self, x, y, g):
        b = x.shape[0]
        ln_sigma = self.cfg.p_mean + self.cfg.p_std * torch.randn(b, generator=g, dtype=torch.float64)
        sigma = ln_sigma.exp().clamp(self.sde.std_min, self.sde.std_max)
        on_grid = torch.rand(b, generator=g) < self.cfg.stage1_grid_fraction
        sigma = torch.where(on_grid, self.grid[torch.randint(0, len(self.grid), (b,), generator=g)], sigma)
        return {"sigma": sigma, "z": torch.randn(x.shape, generator=g),
                "w": self.cfg.w_min + (self.cfg.w_max - self.cfg.w_min) * torch.rand(b, generator=g)}

    def loss(self, model, x, y, noise):
        sigma, w = noise["sigma"].to(x.device), noise["w"].to(x.device)
        xt = x + sigma.to(x.dtype).view(-1, 1, 1, 1) * noise["z"].to(x.device, x.dtype)
        target = guidance_target(self.teacher, xt, sigma, y, w)
        return weighted_error(model, model.denoise(xt, sigma, y, guidance=w), target, sigma), {}


class ProgressiveTask:
    """Stage 2, one round: the student's step k (sigma_2k -> sigma_2k+2 of the teacher grid) regresses onto the x0~ of
    two teacher DDIM steps; x = x0 + sigma_2k z, k uniform over the student's steps, w ~ U[w_min, w_max]."""

    def __init__(self, teacher, teacher_grid: torch.Tensor, cfg: DistillConfig):
        self.teacher, self.grid, self.cfg = teacher, teacher_grid, cfg
        self.student_steps = (len(teacher_grid) - 1) // 2

    def noise(self, x, y, g):
        b = x.shape[0]
        return {"k": torch.randint(0, self.student_steps, (b,), generator=g), "z": torch.randn(x.shape, generator=g),
                "w": self.cfg.w_min + (self.cfg.w_max - self.cfg.w_min) * torch.rand(b, generator=g)}

    def loss(self, model, x, y, noise):
        k, w = noise["k"], noise["w"].to(x.device)
        sigma, mid, nxt = (self.grid[2 * k + j].to(x.device) for j in range(3))   # (B,) float64 each
        xt = x + sigma.to(x.dtype).view(-1, 1, 1, 1) * noise["z"].to(x.device, x.dtype)
        target = two_step_target(self.teacher, xt, sigma, mid, nxt, y, w)
        return weighted_error(model, model.denoise(xt, sigma, y, guidance=w), target, sigma), {}


def _stage_config(cfg: DistillConfig, out: Path, steps: int, index: int) -> TrainConfig:
    base = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{**base, "out": str(out), "steps": steps, "seed": cfg.seed + index, "weights_dir": "",
                          "push_to_hub": "", "sample_every": 0, "fit_to_deadline": False})   # --deadline: a hard stop


def _portable(model):
    """A CPU, contiguous-format copy: what save_pretrained writes and a Pipeline runs."""
    return copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format)


def _for_training(model, cfg: DistillConfig, device):
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def _sample_grid(student, steps: int, w: float, path: Path) -> None:
    """10 x 10 grid (a row per digit, seed 0) with the student's own sampler."""
    pipe = Pipeline(_portable(student).float(), name=path.parent.name, precision="fp32")
    images, _ = pipe.generate(torch.arange(10).repeat_interleave(10), sampler="ddim", num_steps=steps, guidance=w,
                              seed=0)
    save_grid(images, path, nrow=10)


def run_stage(cfg: DistillConfig, index: int, name: str, steps: int, make, task, x, y, device, sample_steps: int,
              info: dict):
    """Train one stage in out/<name>/ (or load it when finished); returns (EMA student, record)."""
    stage_dir = Path(cfg.out) / name
    done_json, student_dir = stage_dir / "stage.json", stage_dir / "student"
    if done_json.is_file() and (student_dir / "model.safetensors").is_file():
        record = json.loads(done_json.read_text())
        note = "" if record.get("steps") == steps else f" (it ran {record.get('steps')} steps, not {steps})"
        print(f"{name}: finished earlier, skipped{note}; delete {stage_dir} to train it again")
        return _for_training(ScoreModel.from_pretrained(student_dir), cfg, device), record
    stage_cfg = _stage_config(cfg, stage_dir, steps, index)
    ema, history = train_loop(stage_cfg, _for_training(make(), cfg, device), task, x, y, device=device)
    stopped = stage_cfg._run_info.get("stopped_by")
    if stopped:   # saved as a checkpoint, not as a finished stage: the same command with --resume finishes it
        raise SystemExit(f"{name}: stopped by {stopped} at step {stage_cfg._run_info['steps_done']} of {steps}; "
                         f"its checkpoint is in {stage_dir}: run the same command with --resume to finish it")
    tail = [h["loss"] for h in history[-max(1, len(history) // 10):]]
    record = {"stage": name, "steps": steps, **info, "first_loss": history[0]["loss"] if history else None,
              "final_loss": round(sum(tail) / max(1, len(tail)), 5), "wall_s": history[-1]["wall_s"] if history else 0.0}
    save_weights(_portable(ema), student_dir)
    _sample_grid(ema, sample_steps, min(max(cfg.sample_guidance, cfg.w_min), cfg.w_max), stage_dir / "samples.png")
    done_json.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{name}: {record}")
    return ema.to(device), record


def load_start(cfg: DistillConfig):
    """(student, its step count) from --start-from, checked against this run's grid; (None, None) without it."""
    if not cfg.start_from:
        return None, None
    if not (Path(cfg.start_from) / "config.json").is_file():
        raise SystemExit(f"--start-from {cfg.start_from}: not a weights folder (it needs config.json and "
                         "model.safetensors, as train.distill writes them)")
    student = ScoreModel.from_pretrained(cfg.start_from)
    d = student.distilled or {}
    if not d.get("steps"):
        raise SystemExit(f"--start-from {cfg.start_from}: not a progressive student (its config has no distilled steps)")
    have = (int(d["grid_steps"]), float(d["rho"]), [float(v) for v in d["guidance_range"]])
    want = (cfg.grid_steps, float(cfg.rho), [float(cfg.w_min), float(cfg.w_max)])
    if have != want:
        raise SystemExit(f"--start-from {cfg.start_from}: its grid (grid steps, rho, guidance range) {have} is not this "
                         f"run's {want}: set --grid-steps, --rho, --w-min and --w-max to match")
    return student, int(d["steps"])


def earlier_stages(cfg: DistillConfig, start_steps: int) -> list[dict]:
    """The stages that made the --start-from student, from its training record (train/records/<name>.json, kept for
    shipped weights only), each with that run's command: a re-trained student's record then tells its whole making.
    [] when the start is not a shipped folder or its record does not reach a `start_steps` student."""
    start = Path(cfg.start_from)
    path = RECORDS / f"{start.name}.json"
    if start.resolve().parent != DEFAULT_WEIGHTS_DIR.resolve() or not path.is_file():
        return []
    record, made = json.loads(path.read_text()), []
    for stage in record.get("stages", []):
        made.append({**stage, "command": record.get("command")})
        if stage.get("student_steps") == start_steps:
            return made
    return []


def stages_of(records: list[dict], steps: int) -> list[dict]:
    """The stages that made the `steps`-step student: every stage up to the one that produced it (later rounds only
    used it as their teacher); a --start-from student's own entry counts as producing it."""
    for k, record in enumerate(records):
        if record.get("student_steps") == steps:
            return records[:k + 1]
    raise ValueError(f"no stage made a {steps}-step student")


def student_record(records: list[dict], steps: int) -> dict:
    """What a student's training record adds to train.common.finish's: its stages, its final loss, the wall time."""
    mine = stages_of(records, steps)
    return {"stages": mine, "ship_steps": steps, "final_loss": mine[-1]["final_loss"],
            "total_wall_s": round(sum(r.get("wall_s") or 0.0 for r in mine), 1)}


def write_export_record(cfg: DistillConfig, records: list[dict], steps: int, dest: Path) -> None:
    """The record of an exported student: the shipped student's record.json with this student's stages; beside it in
    the run folder (record-{steps}step.json) and, for shipped weights, in train/records/ like finish's."""
    record = {**json.loads((Path(cfg.out) / "record.json").read_text()), **student_record(records, steps)}
    text = json.dumps(record, indent=1) + "\n"
    (Path(cfg.out) / f"record-{steps}step.json").write_text(text)
    if dest.resolve().parent == DEFAULT_WEIGHTS_DIR.resolve():
        (RECORDS / f"{dest.name}.json").write_text(text)


def main(argv=None):
    cfg = parse_config(DistillConfig, argv)
    start, start_steps = load_start(cfg)
    plan = round_plan(cfg, start_steps)
    _, world, device, (x_train, y_train) = setup(cfg)
    if world > 1:
        raise SystemExit("train.distill runs as one process (the teacher's calls are not split across ranks)")
    teacher = _for_training(ScoreModel.from_pretrained(cfg.teacher), cfg, device).eval().requires_grad_(False)
    if not teacher.conditional:
        raise SystemExit(f"{cfg.teacher} is unconditional: guided distillation needs a class-conditional teacher")
    w_range, sde = (cfg.w_min, cfg.w_max), teacher.sde

    def student_config(steps):
        return distilled_config(steps, cfg.grid_steps, w_range, cfg.rho, teacher=Path(cfg.teacher).name)

    records, current, students = [], teacher, {}
    if start is not None:
        current = students[start_steps] = _for_training(start, cfg, device)
        earlier = earlier_stages(cfg, start_steps)
        records += [{**r, "student_steps": None if r.get("student_steps") == start_steps else r.get("student_steps")}
                    for r in earlier]       # the start's own entry below is the one that "produced" it
        records.append({"stage": f"start-from {cfg.start_from}", "student_steps": start_steps, "steps": 0,
                        "final_loss": earlier[-1]["final_loss"] if earlier else None, "wall_s": 0.0})
    elif cfg.stage1_steps > 0:
        current, rec = run_stage(cfg, 0, "guidance", cfg.stage1_steps,
                                 lambda: make_student(teacher, student_config(None), seed=cfg.seed),
                                 GuidanceTask(teacher, cfg), x_train, y_train, device, cfg.grid_steps,
                                 {"student_steps": None, "teacher_steps": None})
        records.append(rec)
    for index, (t_steps, s_steps, opt_steps) in enumerate(plan, start=1):
        prev = current.eval().requires_grad_(False)
        grid = student_sigmas(sde, cfg.grid_steps, t_steps, cfg.rho)          # the teacher's (t_steps + 1) sigmas
        current, rec = run_stage(cfg, index, f"round-{t_steps}-to-{s_steps}", opt_steps,
                                 lambda prev=prev, n=s_steps: make_student(prev, student_config(n), seed=cfg.seed),
                                 ProgressiveTask(prev, grid, cfg), x_train, y_train, device, s_steps,
                                 {"student_steps": s_steps, "teacher_steps": t_steps})
        records.append(rec)
        students[s_steps] = current
    exported = {n: save_weights(_portable(students[n]), f"{cfg.weights_dir.rstrip('/')}-{n}step")
                for n in _ints(cfg.export_steps)}
    final = _portable(students[cfg.ship_steps])
    finish(cfg, final, student_record(records, cfg.ship_steps))
    for n, dest in exported.items():
        if cfg.weights_dir:
            write_export_record(cfg, records, n, dest)
        print(f"{n}-step student written to {dest}")
    return final, records


if __name__ == "__main__":
    main()
