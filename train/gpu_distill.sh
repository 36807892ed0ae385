#!/usr/bin/env bash
# Issue 28's second prepared device command, for a session with device time left after gpu_retrain.sh (or a later
# one): guided progressive distillation of the NEW pixel-cond into the 4-, 2- and 1-step students on the GPU
# (train.distill: stage 1 then rounds 16->8->4->2->1, fp32, batch 256, 4x the CPU run's steps: 16x its images),
# with the same hard stop and packing as the retrain (train/gpu_run.py --plan distill). docs/gpu-run.md.
#
# 1. Here: python -m train.gpu_prepare --teacher gpu-results/weights/pixel-cond   (stages .gpu-carry/teacher/)
# 2. The device call, exactly:
#        command:   bash train/gpu_distill.sh
#        timeout_s: 570
#        carry:     [".whl", ".gpu-carry"]
#    Without .gpu-carry/teacher the shipped weights/pixel-cond is the teacher (say so in the record's note).
#    An unfinished stage stops at the deadline with its checkpoint saved: carry it back (python -m train.gpu_prepare --resume)
#    and run the same command again to finish it.
# 3. Here: python -m train.gpu_unpack <files_at> --dest gpu-results
# Same wrapper as gpu_retrain.sh (the wheel check, the log, the exit status), with train.gpu_run's distillation plan.
OUT="${OUT:-/tmp/gpu-distill-out}" exec bash "$(dirname "$0")/gpu_retrain.sh" --plan distill "$@"
