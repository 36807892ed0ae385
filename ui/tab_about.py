"""Tab 5, About: what is going on (ui/about.md), and the evaluation sections of each model's card."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from diffusion.cards_read import card_metrics
from diffusion.registry import EVALUATOR_NAMES, first

from .controls import Page, note
from .lab import MODEL_NAMES, Lab

ABOUT = (Path(__file__).resolve().parent / "about.md").read_text(encoding="utf-8")
CARD_NAMES = (*MODEL_NAMES, first(role="autoencoder"), EVALUATOR_NAMES[0])   # the cards the About tab shows


class AboutTab:
    title = "About"

    def __init__(self, lab: Lab):
        self.lab = lab

    def layout(self, page: Page) -> None:
        gr.Markdown(ABOUT)
        note("Below: the evaluation sections of each model's card (`weights/NAME/README.md`), measured when the "
             "weights were built. Frechet distances there are computed on the features of the project's own two MNIST "
             "classifiers (weights/classifier, weights/classifier-resnet), so they compare these models with each other "
             "and with real digits' own floor, not with figures published elsewhere.")
        for name in CARD_NAMES:
            with gr.Accordion(f"Model card: {name}", open=name in page.available[:1]):
                text = page.cards.get(name)
                gr.Markdown(card_metrics(text) if text else f"*No model card for {name} was found.*")
