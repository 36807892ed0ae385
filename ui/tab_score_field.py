"""Score field (2-D, exact): a Gaussian mixture in the plane under the same VE SDE, whose noised density p_t and score
grad log p_t are known in closed form (diffusion/toy2d.py). The field at any t, and particles from the prior moved by
the reverse SDE (Euler-Maruyama) and by the probability-flow ODE (Heun, same NFE) side by side, paths drawn."""
from __future__ import annotations

import math
import time

import gradio as gr
import numpy as np
import torch

from diffusion.samplers import sampler_spec
from diffusion.toy2d import DATASETS, MixtureScore, to_points

from .controls import IMG, Page, note
from .lab import Lab, fmt_s
from .plane import Panel, grid_points, side_by_side
from .validation import LABELS, MAX_SEED, check_choice, check_float, check_int

LABELS.update({"dataset": "Data set", "num_particles": "Particles", "nfe": "Network evaluations (NFE)",
               "train_steps": "Training steps"})
MAX_PARTICLES, MAX_TOY_NFE = 2000, 1000
FRAMES, MAX_RATE = 30, 15.0          # streamed frames per run (every k-th step, the last always), updates / s at most
VIEW = 1.4                           # half-width of the data's view: every data set lies inside [-1, 1]^2
TRACKED = 12                         # particles whose whole path is drawn
SDE_COLOUR, ODE_COLOUR = (120, 255, 140), (110, 200, 255)


def density(mixture, pts: np.ndarray, std: float) -> np.ndarray:
    """p_t(x) = sum_k pi_k N(x; mu_k, (s_k^2 + std^2) I) at pts (N, 2), in numpy: the same closed form as
    GaussianMixture2D.log_prob, single-threaded (small torch ops contend for the cores a busy CPU has left)."""
    mu, s, w = mixture.means.numpy(), mixture.stds.numpy(), mixture.weights.numpy()
    v = s**2 + std**2                                                     # (K,)
    d2 = ((pts[:, None, :] - mu[None]) ** 2).sum(-1)                      # (N, K)
    return (w / (2 * np.pi * v) * np.exp(-d2 / (2 * v))).sum(1)


def density_panel(mixture, std: float, lim: float, title: str, px: int = 340, g: int = 96) -> Panel:
    """A panel with p_t (std = std(t)) as a heatmap over [-lim, lim]^2, sqrt colour scale."""
    dens = density(mixture, grid_points(lim, g), std).reshape(g, g)
    panel = Panel(lim, px, title)
    panel.heatmap(dens, "p_t(x)\n(sqrt\nscale)")
    return panel


def nice_lim(pts: np.ndarray) -> float:
    """A view half-width holding ~98% of the points, on a 1.25x ladder from VIEW (steady between frames)."""
    q = float(np.quantile(np.abs(pts), 0.98)) * 1.08 if len(pts) else VIEW
    return VIEW * 1.25 ** max(0, math.ceil(math.log(max(q, VIEW) / VIEW) / math.log(1.25)))


class ScoreFieldTab:
    title = "Score field (2-D, exact)"

    def __init__(self, lab: Lab):
        self.lab = lab

    def _mixture(self, dataset):
        return DATASETS[check_choice("dataset", dataset, list(DATASETS))]()

    # -- the field at one t ------------------------------------------------------------------------
    def field(self, dataset, t):
        """p_t as a heatmap and the exact score grad log p_t as arrows, at diffusion time t."""
        mixture = self._mixture(dataset)
        t = check_float("t", t, 0.0, 1.0)
        std = self.lab.sde.marginal_std(t)
        panel = density_panel(mixture, std, VIEW, f"{dataset}: density p_t and score, t = {t:.3f}, std(t) = {std:.3g}",
                              px=440)
        pos = torch.from_numpy(grid_points(VIEW, 15))
        score = mixture.score(pos, std).numpy()
        panel.arrows(pos.numpy(), score)
        norm = np.linalg.norm(score, axis=1)
        status = (f"t = {t:.3f}: std(t) = {std:.3g}. Each component N(mu_k, s_k^2 I) has become N(mu_k, (s_k^2 + "
                  f"std^2) I); the score on this grid has length up to {norm.max():.2g} "
                  f"(arrows: exact direction, length ~ sqrt of the size).")
        return panel.finish(), status

    # -- particles: reverse SDE vs probability-flow ODE --------------------------------------------
    @staticmethod
    def _frame(mixture, sde, runs, n_tracked):
        """Two panels: each run's current points, its tracked paths, p_t at its current t as the background."""
        now = np.concatenate([r["pts"][-1] for r in runs.values()])
        lim = nice_lim(now)
        panels = []
        for (name, r), colour in zip(runs.items(), (SDE_COLOUR, ODE_COLOUR)):
            std = sde.marginal_std(r["t"])
            p = density_panel(mixture, std, lim, f"{name}: t = {r['t']:.3f}, NFE {r['nfe']}", px=330, g=72)
            p.paths(np.stack([q[:n_tracked] for q in r["pts"]]), colour)
            p.points(r["pts"][-1], (255, 255, 255), r=1.6)
            panels.append(p.finish())
        return side_by_side(panels)

    def particles(self, dataset, num_particles, nfe, seed):
        """Stream both runs in lockstep by NFE; end with the samples' moments against the mixture's."""
        lab = self.lab
        mixture = self._mixture(dataset)
        n = check_int("num_particles", num_particles, 1, MAX_PARTICLES)
        nfe = check_int("nfe", nfe, 3, MAX_TOY_NFE)
        seed = check_int("seed", seed, 0, MAX_SEED)
        sde, start = lab.sde, time.perf_counter()
        model = MixtureScore(mixture, sde)
        gen = torch.Generator().manual_seed(seed)
        x = sde.prior_sample((n, 2, 1, 1), gen, dtype=torch.float64)          # (n, 2, 1, 1) ~ N(0, std(1)^2 I)
        heun_steps = sampler_spec("heun").steps_for(nfe)
        streams = {"SDE (Euler-Maruyama)": sampler_spec("euler_maruyama").fn(
                       model, x.clone(), num_steps=nfe, generator=gen),
                   "ODE (Heun)": sampler_spec("heun").fn(model, x.clone(), num_steps=heun_steps)}
        runs = {k: {"t": 1.0, "nfe": 0, "pts": [to_points(x).numpy()], "done": False} for k in streams}
        tracked = min(TRACKED, n)
        every = max(1, math.ceil(nfe / FRAMES))
        what = (f"**{dataset}** · {n} particles · seed {seed} · reverse SDE: Euler-Maruyama, {nfe} steps · "
                f"ODE: Heun, {heun_steps} steps ({sampler_spec('heun').nfe_for(heun_steps)} NFE)")
        yield self._frame(mixture, sde, runs, tracked), what + "\n\nstarting at the prior N(0, 9.85² I)…"
        last_emit, next_frame = time.perf_counter(), every
        while not all(r["done"] for r in runs.values()):
            # lockstep by NFE: advance the run that has spent fewer network evaluations
            name = min((k for k in runs if not runs[k]["done"]), key=lambda k: runs[k]["nfe"])
            step = next(streams[name])
            r = runs[name]
            r.update(t=float(step.t), nfe=step.nfe, done=step.final)
            r["pts"].append(to_points(step.x).numpy())
            lab.check_time(time.perf_counter() - start)
            low = min(q["nfe"] for q in runs.values())
            if all(q["done"] for q in runs.values()) or low >= next_frame:
                next_frame = low + every
                wait = 1 / MAX_RATE - (time.perf_counter() - last_emit)
                if wait > 0:
                    time.sleep(wait)                  # <= 15 updates / s: slow enough to watch the paths
                last_emit = time.perf_counter()
                yield self._frame(mixture, sde, runs, tracked), f"{what}\n\nNFE {low}/{nfe}"
        yield self._frame(mixture, sde, runs, tracked), what + "\n\n" + self._moments(mixture, runs, start)

    @staticmethod
    def _moments(mixture, runs, start) -> str:
        mean, cov = mixture.moments()
        rows = ["| | mean x1 | mean x2 | var x1 | var x2 | cov x1 x2 |", "|---|---:|---:|---:|---:|---:|",
                f"| the mixture (exact) | {mean[0]:.3f} | {mean[1]:.3f} | {cov[0, 0]:.3f} | {cov[1, 1]:.3f} | "
                f"{cov[0, 1]:.3f} |"]
        for name, r in runs.items():
            p = r["pts"][-1]
            c = np.cov(p.T) if len(p) > 1 else np.zeros((2, 2))
            m = p.mean(0)
            rows.append(f"| {name} | {m[0]:.3f} | {m[1]:.3f} | {c[0, 0]:.3f} | {c[1, 1]:.3f} | {c[0, 1]:.3f} |")
        return (f"**Done** in {fmt_s(time.perf_counter() - start)}. The samples' moments against the data's "
                f"(they agree up to sampling noise, ~1/sqrt(particles)):\n\n" + "\n".join(rows))

    # -- layout and wiring -------------------------------------------------------------------------
    def layout(self, page: Page) -> None:
        note("A toy world where nothing is learned: the data are a mixture of small Gaussian blobs in the plane, so "
             "the noised density p_t and its score (the force that pulls noise back to data) are known exactly. "
             "Slide t: the colours show p_t, the arrows point uphill in log-density, i.e. along the score.")
        with gr.Row():
            dataset = gr.Radio(list(DATASETS), value="digit 2", label="Data set")
            t = gr.Slider(0, 1, 0.05, step=0.005, label="t (diffusion time)")
        with gr.Row():
            view = gr.Image(label="p_t and the score field", height=500, elem_id="sf-field", **IMG)
            status = gr.Markdown("", elem_id="sf-status")
        note("At t near 0 the arrows point straight at the nearest stroke; as t grows the blobs merge into one "
             "broad Gaussian and the field becomes a plain pull towards the middle, of size ~ distance / std(t)².")
        gr.Markdown("#### Particles: reverse SDE vs probability-flow ODE")
        note("Press **Run particles**: the same points drawn from the prior N(0, 9.85² I) are moved by the reverse "
             "SDE (Euler-Maruyama: the score's pull plus fresh noise each step) and by the probability-flow ODE "
             "(Heun: the score's pull only, deterministic), at the same number of score evaluations. Paths of 12 "
             "particles are drawn; the view zooms in as they gather.")
        with gr.Row():
            n = gr.Slider(10, MAX_PARTICLES, 300, step=10, label="Particles")
            nfe = gr.Slider(3, MAX_TOY_NFE, 100, step=1, label="Network evaluations (NFE)",
                            info="exact score: one evaluation is cheap here")
            seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
        with gr.Row():
            run = gr.Button("Run particles", variant="primary", elem_id="sf-run")
            stop = gr.Button("Stop", variant="stop")
        movie = gr.Image(label="left: reverse SDE · right: probability-flow ODE", height=420, elem_id="sf-particles",
                         **IMG)
        pstatus = gr.Markdown("", elem_id="sf-pstatus")
        note("The SDE paths jitter, the ODE paths are smooth curves, yet both clouds end on the strokes in the same "
             "proportions: the two processes share every marginal p_t. The table compares the final clouds' "
             "moments with the mixture's.")

        fld = dict(preprocess=False, concurrency_id="score-field", concurrency_limit=2, trigger_mode="always_last",
                   show_progress="minimal")
        gr.on([dataset.change, t.change], self.field, [dataset, t], [view, status], api_name="score_field", **fld)
        page.demo.load(self.field, [dataset, t], [view, status], api_name="score_field_initial", **fld)
        go = run.click(self.particles, [dataset, n, nfe, seed], [movie, pstatus], api_name="score_particles",
                       preprocess=False, concurrency_id="score-field", concurrency_limit=2)
        stop.click(None, cancels=[go])


__all__ = ["ScoreFieldTab"]
