"""Training time-lapse: the sample grids a training run recorded at each checkpoint (diffusion/timelapse.py: the same
prior noise and labels every time, weights/<model>/timelapse.safetensors), with a step slider, the loss curve with
the current checkpoint marked, and a Play button that streams the frames in order."""
from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from diffusion import timelapse as tl
from diffusion.images import grid
from diffusion.registry import DEFAULT_WEIGHTS_DIR, FLAGSHIP, model_spec

from .controls import IMG, PLUMBING, Page, note
from .lab import MODEL_NAMES, Lab
from .plane import line_chart
from .validation import LABELS, check_choice, check_int

LABELS.update({"frame": "Checkpoint"})
PLAY_FPS = 4.0          # frames a second when playing: slow enough to see each checkpoint


def arrange(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(N, H, W) and labels (N,) -> images reordered so that a grid of 10 columns has digit d in column d (when
    every digit appears equally often), and the column count."""
    lab = labels.tolist()
    counts = {d: lab.count(d) for d in range(10)}
    if min(lab) >= 0 and len(set(counts.values())) == 1 and counts[0] * 10 == len(lab):
        order = [[i for i, v in enumerate(lab) if v == d] for d in range(10)]
        return images[torch.tensor([order[d][r] for r in range(counts[0]) for d in range(10)])], 10
    return images, int(np.ceil(np.sqrt(len(lab))))


class TimelapseTab:
    title = "Training time-lapse"
    root: Path = DEFAULT_WEIGHTS_DIR     # weights/<model>/timelapse.safetensors is looked for here (tests point it)

    def __init__(self, lab: Lab):
        self.lab = lab
        self._cache: dict[Path, tuple[float, tl.Timelapse]] = {}

    def recording(self, model: str) -> tl.Timelapse | None:
        """The model's time-lapse, re-read when the file changes (a training run appends to it); None if absent."""
        path = Path(self.root) / model / tl.FILENAME
        if not path.is_file():
            return None
        mtime = path.stat().st_mtime
        if path not in self._cache or self._cache[path][0] != mtime:
            try:
                self._cache[path] = (mtime, tl.load(path))
            except Exception as e:  # noqa: BLE001 - a damaged file is reported, not raised into the page
                raise gr.Error(f"model: the time-lapse of {model} could not be read ({e}).", print_exception=False)
        return self._cache[path][1]

    def missing(self, model: str) -> str:
        return (f"**{model} has no training time-lapse** (no `{tl.FILENAME}` beside its weights). The shipped "
                f"{model} was trained before runs recorded one. A training run records it as it goes: "
                f"`python -m {model_spec(model).train_module}` samples the same noise and digits every `--sample-every` steps "
                f"(default 500) into `runs/{model}/{tl.FILENAME}` and copies it to `weights/{model}/` at the end; "
                f"this tab then plays it (the file is re-read when it changes).")

    def _view(self, model: str, rec: tl.Timelapse, k: int):
        """Frame k as an upscaled grid, the loss curve with k marked, and what the numbers are."""
        images, ncol = arrange(rec.frame(k), rec.labels)
        pic = grid(images, nrow=ncol, scale=2, gap=1)
        chart = line_chart(rec.step.numpy(), rec.loss.numpy(), f"{model}: training loss at each recorded checkpoint",
                           "optimizer step", "loss", mark=k)
        digits = "digits 0-9 by column" if ncol == 10 else "unconditional samples"
        status = (f"checkpoint {k + 1}/{len(rec)} · optimizer step **{int(rec.step[k])}** · training wall time "
                  f"**{float(rec.wall_s[k]) / 60:.1f} min** · loss **{float(rec.loss[k]):.4g}** · "
                  f"{rec.images.shape[1]} samples ({digits}), 10 sampler steps, the same noise in every frame")
        return pic, chart, status

    # -- handlers ----------------------------------------------------------------------------------
    def open(self, model):
        """A model chosen: the slider set to its checkpoints (at the last one) and that frame."""
        model = check_choice("model", model, MODEL_NAMES)
        rec = self.recording(model)
        if rec is None:
            return gr.Slider(minimum=0, maximum=1, value=0, interactive=False), None, None, self.missing(model)
        last = len(rec) - 1
        return (gr.Slider(minimum=0, maximum=max(last, 1), value=last, interactive=last > 0),
                *self._view(model, rec, last))

    def frame(self, model, frame):
        model = check_choice("model", model, MODEL_NAMES)
        rec = self.recording(model)
        if rec is None:
            return None, None, self.missing(model)
        k = check_int("frame", frame, 0, len(rec) - 1)
        return self._view(model, rec, k)

    def play(self, model, frame):
        """Stream the checkpoints from `frame` (from the first if at the last) to the end, PLAY_FPS a second."""
        model = check_choice("model", model, MODEL_NAMES)
        rec = self.recording(model)
        if rec is None:
            yield gr.skip(), None, None, self.missing(model)
            return
        k = check_int("frame", frame, 0, len(rec) - 1)
        for j, _ in self.lab.run(range(0 if k == len(rec) - 1 else k, len(rec))):   # guard and time limit per frame
            tick = time.perf_counter()
            yield j, *self._view(model, rec, j)
            if j < len(rec) - 1:
                time.sleep(max(0.0, 1 / PLAY_FPS - (time.perf_counter() - tick)))

    # -- layout and wiring -------------------------------------------------------------------------
    def layout(self, page: Page) -> None:
        note("How a model learned: during training, every few hundred optimizer steps the run drew samples from the "
             "same prior noise and the same digits and kept them. Move the slider (or press **Play**) to watch the "
             "scribbles turn into digits, and compare with the loss at that moment.")
        with gr.Row():
            model = gr.Radio(list(MODEL_NAMES), value=FLAGSHIP, label="Model")
            frame = gr.Slider(0, 1, 0, step=1, label="Checkpoint", elem_id="tl-frame")
        with gr.Row():
            play = gr.Button("Play", variant="primary", elem_id="tl-play")
            stop = gr.Button("Stop", variant="stop")
        status = gr.Markdown("", elem_id="tl-status")
        with gr.Row():
            pic = gr.Image(label="samples at this checkpoint", height=480, elem_id="tl-grid", **IMG)
            chart = gr.Image(label="loss curve", height=280, elem_id="tl-loss", **IMG)
        note("Every frame uses the same starting noise, so a change between frames is the model's doing, not luck. "
             "The DSM loss falls fast and then flattens while the samples keep improving: the loss averages over all "
             "noise levels, and the small-noise ones that decide the strokes are a small part of it.")

        quick = dict(preprocess=False, concurrency_id="timelapse", concurrency_limit=2, show_progress="minimal")
        model.change(self.open, model, [frame, pic, chart, status], api_name="timelapse_open", **quick)
        page.demo.load(self.open, model, [frame, pic, chart, status], api_name="timelapse_initial", **quick,
                       **PLUMBING)
        frame.input(self.frame, [model, frame], [pic, chart, status], api_name="timelapse_frame",
                    trigger_mode="always_last", **quick)
        go = play.click(self.play, [model, frame], [frame, pic, chart, status], api_name="timelapse_play", **quick)
        stop.click(None, cancels=[go])
