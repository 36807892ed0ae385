#!/usr/bin/env bash
# Build every shipped checkpoint with the committed settings, in dependency order, then evaluate.
# Each step resumes from its last checkpoint if interrupted (--resume), so rerunning continues.
# Usage: bash train/build_all.sh [extra flags for every script, e.g. --push-to-hub user/mnist-diffusion-lab]
set -euo pipefail
cd "$(dirname "$0")/.."
python -m train.classifier --resume "$@"
python -m train.classifier_resnet --resume "$@"          # the second, independent evaluator
python -m train.autoencoder --perceptual none --resume "$@"   # LPIPS backbone is not downloadable offline
python -m train.pixel_cond --resume "$@"
python -m train.latent_cond --resume "$@"
python -m train.pixel_uncond --resume "$@"
python -m train.distill --teacher weights/pixel-cond --out runs/pixel-cond-distilled --weights-dir weights/pixel-cond-distilled --resume "$@"
# the 1- and 2-step students, fine-tuned by distribution matching (docs/distillation.md); the fake denoiser starts as stage 1's
python -m train.dmd --student weights/pixel-cond-distilled-1step --teacher weights/pixel-cond --fake-init runs/pixel-cond-distilled/guidance/student --out runs/pixel-cond-distilled-1step-dmd --weights-dir weights/pixel-cond-distilled-1step --steps 600 --resume "$@"
python -m train.dmd --student weights/pixel-cond-distilled-2step --teacher weights/pixel-cond --fake-init runs/pixel-cond-distilled/guidance/student --eta 0.5 --out runs/pixel-cond-distilled-2step-dmd --weights-dir weights/pixel-cond-distilled-2step --steps 600 --resume "$@"
python -m train.evaluate --all
