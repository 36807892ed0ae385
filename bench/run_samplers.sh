#!/usr/bin/env bash
# The sampler benchmark as run for bench/results/ (2 CPU cores, idle machine), most important points first:
# each line adds its records to bench/results/samplers.json and rewrites samplers.md and quality_vs_nfe.png,
# so stopping part way keeps everything finished so far.
#   bash bench/run_samplers.sh            # ~2 h on 2 CPU cores
# The whole grid at 1000 images per point (every sampler x NFE 10..500 x 3 models) is one command,
# ~8 h on 2 CPU cores (minutes on a GPU):
#   python -m bench.samplers --samples 1000
set -euo pipefail
cd "$(dirname "$0")/.."
NOTE="${NOTE:-idle machine}"
B=(python -m bench.samplers --grids --note "$NOTE")
for model in pixel-cond latent-cond pixel-uncond; do
  # 1. the reference (seed tutorial: Euler-Maruyama, 500 steps) and the fast ODE solvers, 1000 images each
  "${B[@]}" --models "$model" --samplers euler_maruyama --nfe 500 --samples 1000
  "${B[@]}" --models "$model" --samplers dpmpp_2m heun --nfe 10 20 35 50 --samples 1000
done
for model in pixel-cond latent-cond pixel-uncond; do
  # 2. the SDE samplers' and RK45's curves below 500 NFE, 200 images each (the first 200 of a 1000-image run)
  "${B[@]}" --models "$model" --samplers euler_maruyama predictor_corrector --nfe 10 20 35 50 100 250 --samples 200
  "${B[@]}" --models "$model" --samplers rk45 --samples 200
done
# 3. guidance sweep at the default sampler and steps
python -m bench.samplers --models pixel-cond --samplers dpmpp_2m --nfe 10 --guidance 0 1 2 3 5 --samples 1000 --note "$NOTE"
