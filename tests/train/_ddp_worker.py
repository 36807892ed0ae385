"""One rank of a torchrun-style CPU run for tests/train/test_training.py (not a test module itself).

    RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p python tests/train/_ddp_worker.py RUN_DIR RESULT.safetensors

Also imported by the tests for the shared tiny setup, so the 1-process reference is built identically.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT, ROOT / "tests"):          # the project, and tests/ for factories.py
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from diffusion.score import ScoreModel  # noqa: E402
from factories import tiny_score  # noqa: E402
from train.diffusion_models import DSMTask  # noqa: E402
from train.loop import TrainConfig  # noqa: E402

LABEL_DROPOUT = 0.25


def tiny_data(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def tiny_model(seed: int = 0) -> ScoreModel:
    return tiny_score(seed, image_size=8, num_classes=10).train()


def tiny_task(model: ScoreModel) -> DSMTask:
    return DSMTask(model, LABEL_DROPOUT, conditional=True)


def tiny_config(out, **kw) -> TrainConfig:
    # 64 images / batch 16 = 4 steps per epoch: 6 steps cross an epoch boundary (a new data order)
    base = dict(out=str(out), steps=6, batch_size=16, lr=1e-2, warmup=2, min_lr_ratio=0.1, ckpt_every=3, keep=2,
                log_every=1, ema_decay=0.9, seed=0, grad_clip=1.0, threads=1)  # fixed threads: bitwise-comparable runs
    return TrainConfig(**{**base, **kw})


def state_tensors(model, ema_model) -> dict:
    return {**{f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()},
            **{f"ema.{k}": v.detach().clone().contiguous() for k, v in ema_model.state_dict().items()}}


def sgd(params, lr, weight_decay):
    """SGD with momentum for the DDP comparison: Adam divides by sqrt(v), which turns float-summation noise in
    near-zero gradients (e.g. the cross-attention's to_q / to_k / norm2, which get no gradient at all with one
    context token) into parameter differences of ~1e-4; SGD keeps them at the gradients' own ~1e-7 scale."""
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def main(run_dir: str, result: str, steps: int) -> None:
    import json

    import torch.distributed as dist
    from safetensors.torch import save_file

    from train.loop import dist_setup, train_loop

    torch.set_num_threads(1)
    rank, world, device = dist_setup("cpu")
    model = tiny_model()
    x, y = tiny_data()
    ema, history = train_loop(tiny_config(run_dir, steps=steps), model, tiny_task(model), x, y,
                              device=device, rank=rank, world=world, optimizer_cls=sgd)
    if rank == 0:
        save_file(state_tensors(model, ema), result, metadata={"history": json.dumps(history)})
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
