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
from diffusion.toy2d import DATASETS, MixtureScore, ToyScoreMLP, to_points, train_toy

from .controls import IMG, PLUMBING, Page, note
from .lab import Lab, fmt_s
from .plane import Panel, grid_points, line_chart, side_by_side
from .run_loop import Lane, lockstep
from .validation import LABELS, MAX_SEED, check_choice, check_float, check_int

LABELS.update({"dataset": "Data set", "num_particles": "Particles", "nfe": "Network evaluations (NFE)",
               "train_steps": "Training steps"})
MIN_PARTICLES, MAX_PARTICLES, MAX_TOY_NFE, MAX_TRAIN_STEPS = 10, 2000, 1000, 5000
FRAMES, MAX_RATE = 30, 15.0          # streamed frames per run (every k-th step, the last always), updates / s at most
MLP_INTERVAL = 0.5                   # s between streamed updates while the tiny MLP trains
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
        n = check_int("num_particles", num_particles, MIN_PARTICLES, MAX_PARTICLES)
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
        lanes = [Lane(k, stream, runs[k]) for k, stream in streams.items()]
        tracked = min(TRACKED, n)
        every = max(1, math.ceil(nfe / FRAMES))
        what = (f"**{dataset}** · {n} particles · seed {seed} · reverse SDE: Euler-Maruyama, {nfe} steps · "
                f"ODE: Heun, {heun_steps} steps ({sampler_spec('heun').nfe_for(heun_steps)} NFE)")
        yield self._frame(mixture, sde, runs, tracked), what + "\n\nstarting at the prior N(0, 9.85² I)…"
        last_emit, next_frame = time.perf_counter(), every
        # lockstep by NFE (the run that has spent fewer score evaluations goes next), one particle batch per step
        # under the run loop's guard; frames every `every` NFE at most MAX_RATE a second (not by the wall-time
        # throttle: slowed down so that the paths can be watched)
        for lane, _ in lab.run(lockstep(lanes), final=lambda _: all(q.done for q in lanes)):
            step, r = lane.step, lane.info
            r.update(t=float(step.t), nfe=step.nfe, done=step.final)
            r["pts"].append(to_points(step.x).numpy())
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

    # -- a tiny MLP learning the field live ---------------------------------------------------------
    @staticmethod
    @torch.no_grad()
    def _learned_vs_exact(mixture, model, sde, t: float) -> tuple[np.ndarray, float]:
        """Three panels at time t: the MLP's field, the exact field (both over p_t), and the error
        std(t) ||s_theta - s|| (the DSM loss's scale: 1 = as large as the noise itself); and its p_t-weighted mean."""
        std = sde.marginal_std(t)
        pos = grid_points(VIEW, 15)
        exact = mixture.score(torch.from_numpy(pos), std).numpy()
        learned = model(torch.from_numpy(pos).float(), torch.tensor(t)).double().numpy()
        panels = []
        for title, field in (("tiny MLP s_theta(x, t)", learned), ("exact score", exact)):
            p = density_panel(mixture, std, VIEW, f"{title}, t = {t:.2f}", px=300, g=64)
            p.arrows(pos, field)
            panels.append(p.finish())
        g = 48
        pts = grid_points(VIEW, g)
        err = std * np.linalg.norm(model(torch.from_numpy(pts).float(), torch.tensor(t)).double().numpy()
                                   - mixture.score(torch.from_numpy(pts), std).numpy(), axis=1)
        p = Panel(VIEW, 300, f"error std(t)|s_theta - s|, t = {t:.2f}", cmap="viridis")
        p.heatmap(err.reshape(g, g), "error", gamma=1.0)
        panels.append(p.finish())
        weight = density(mixture, pts, std)
        return side_by_side(panels), float((err * weight).sum() / weight.sum())

    def train_mlp(self, dataset, train_steps, t, seed):
        """Train ToyScoreMLP by DSM on the mixture, streaming the loss and the learned field against the exact one."""
        lab = self.lab
        mixture = self._mixture(dataset)
        steps = check_int("train_steps", train_steps, 10, MAX_TRAIN_STEPS)
        t = check_float("t", t, 0.01, 1.0)
        seed = check_int("seed", seed, 0, MAX_SEED)
        with torch.random.fork_rng():                       # the initial weights from the seed, global RNG untouched
            torch.manual_seed(seed)
            model = ToyScoreMLP()
        gen, start = torch.Generator().manual_seed(seed), time.perf_counter()
        losses, step = [], -1
        what = f"**{dataset}** · {steps} DSM steps (batch 256, Adam) · field shown at t = {t:g} · seed {seed}"
        pic, err = self._learned_vs_exact(mixture, model, lab.sde, t)
        yield pic, None, what + f"\n\nuntrained: mean error {err:.3f}"
        # one optimizer step per loop step, under the guard and the time limit; ~2 updates a second (drawing the
        # fields costs more than a step)
        for (step, loss), due in lab.run(train_toy(model, mixture, steps, generator=gen), interval=MLP_INTERVAL,
                                         final=lambda item: item[0] == steps - 1):
            losses.append(loss)
            if due and step < steps - 1:
                yield self._mlp_update(mixture, model, losses, t, what, step, steps, start)
        yield self._mlp_update(mixture, model, losses, t, what, step, steps, start, done=True)

    def _mlp_update(self, mixture, model, losses, t, what, step, steps, start, done=False):
        pic, err = self._learned_vs_exact(mixture, model, self.lab.sde, t)
        k = max(1, len(losses) // 50)                        # running mean over ~2% of the steps
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        chart = line_chart(np.arange(len(smooth)) + k, smooth, "DSM loss E||std s_theta(x + std z, t) + z||^2 "
                           "(running mean)", "training step", "loss")
        head = "**Done**" if done else f"step {step + 1}/{steps}"
        return pic, chart, (f"{what}\n\n{head} in {fmt_s(time.perf_counter() - start)} · loss {smooth[-1]:.3f} · "
                            f"mean error std(t)·|s_theta - s| weighted by p_t: {err:.3f}")

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
            n = gr.Slider(MIN_PARTICLES, MAX_PARTICLES, 300, step=10, label="Particles")
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

        with gr.Accordion("Train a tiny score network live (optional, a few seconds)", open=False):
            note("A small MLP (3 hidden layers of 128) learns this field from samples only, by the same denoising "
                 "score matching loss as the MNIST models. Left: what it has learned so far; middle: the exact "
                 "field; right: where it is still wrong (the error in units of the noise, 1 = as large as the noise).")
            with gr.Row():
                train_steps = gr.Slider(10, MAX_TRAIN_STEPS, 1500, step=10, label="Training steps")
                t_view = gr.Slider(0.01, 1, 0.1, step=0.01, label="t (diffusion time) of the field shown")
                train = gr.Button("Train", variant="primary", elem_id="sf-train")
                stop_train = gr.Button("Stop", variant="stop")
            mlp_view = gr.Image(label="learned | exact | error", height=380, elem_id="sf-mlp", **IMG)
            with gr.Row():
                loss_view = gr.Image(label="training loss", height=270, elem_id="sf-loss", **IMG)
                mlp_status = gr.Markdown("", elem_id="sf-mlp-status")
            note("The loss does not fall to 0: even a perfect score leaves the noise that cannot be predicted "
                 "(DSM's minimum is the data's own entropy term). The error is largest far from the data, where no "
                 "training sample ever lands, and at small t, where the field is sharpest.")

        fld = dict(preprocess=False, concurrency_id="score-field", concurrency_limit=2, trigger_mode="always_last",
                   show_progress="minimal")
        gr.on([dataset.change, t.change], self.field, [dataset, t], [view, status], api_name="score_field", **fld)
        page.demo.load(self.field, [dataset, t], [view, status], api_name="score_field_initial", **fld, **PLUMBING)
        go = run.click(self.particles, [dataset, n, nfe, seed], [movie, pstatus], api_name="score_particles",
                       preprocess=False, concurrency_id="score-field", concurrency_limit=2)
        stop.click(None, cancels=[go])
        tr = train.click(self.train_mlp, [dataset, train_steps, t_view, seed], [mlp_view, loss_view, mlp_status],
                         api_name="score_train_mlp", preprocess=False, concurrency_id="score-field",
                         concurrency_limit=2)
        stop_train.click(None, cancels=[tr])


__all__ = ["ScoreFieldTab"]
