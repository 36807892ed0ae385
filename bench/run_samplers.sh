#!/usr/bin/env bash
# The sampler benchmark as run for bench/results/ (2 CPU cores, idle machine), most important points first:
# each line adds its records to bench/results/samplers.json and rewrites samplers.md and quality_vs_nfe.png,
# so stopping part way keeps everything finished so far. ~3 h 30 min on 2 CPU cores.
#   bash bench/run_samplers.sh
# The whole grid at 1000 images per point (every sampler x NFE 10..500 x 3 models) is one command,
# ~8 h on 2 CPU cores (minutes on a GPU):
#   python -m bench.samplers --samples 1000
set -euo pipefail
cd "$(dirname "$0")/.."
NOTE="${NOTE:-idle machine}"
B=(python -m bench.samplers --grids --note "$NOTE")
for model in pixel-cond latent-cond pixel-uncond; do
  # 1. the reference (the seed tutorial's Euler-Maruyama, 500 steps) and the fast ODE solvers: 1000 images each,
  #    the comparison that sets the defaults
  "${B[@]}" --models "$model" --samplers euler_maruyama --nfe 500 --samples 1000
  "${B[@]}" --models "$model" --samplers dpmpp_2m heun dpmpp_2m_sde --nfe 10 20 35 50 --samples 1000
done
# 2. the SDE samplers' and RK45's curves below 500 NFE, 1000 images each (earlier: 200; a run's first 200 images are
#    the same as the 200-image run's, so FD@200 stays comparable), and Euler-Maruyama at 250 steps
"${B[@]}" --models pixel-uncond latent-cond pixel-cond --samplers euler_maruyama predictor_corrector --nfe 10 20 50 100 --samples 1000
"${B[@]}" --models latent-cond pixel-uncond pixel-cond --samplers rk45 --samples 1000
"${B[@]}" --models pixel-uncond latent-cond pixel-cond --samplers euler_maruyama --nfe 250 --samples 1000
# 3. below the grid, for the record: DPM-Solver++(2M) and its SDE form at 5 and 7 steps
"${B[@]}" --models pixel-cond --samplers dpmpp_2m dpmpp_2m_sde --nfe 5 7 --samples 1000
"${B[@]}" --models pixel-uncond --samplers dpmpp_2m_sde --nfe 5 7 --samples 1000
# 4. the guidance sweep at the conditional models' default sampler (w = 2 is in phase 1) -> guidance.md
"${B[@]}" --models pixel-cond latent-cond --samplers dpmpp_2m --nfe 10 --guidance 0 1 3 5 --samples 1000
