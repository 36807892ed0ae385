"""The training time-lapse file (diffusion/timelapse.py): append, resume overwrite, thinning, strict loading."""
import pytest
import torch
from safetensors.torch import save_file

from diffusion import timelapse
from diffusion.hub_mixin import CorruptWeightsError, UnsafeWeightsError


def frames(value, n=4, size=6):
    return torch.full((n, size, size), value)


def test_record_appends_frames_in_step_order(tmp_path):
    path = tmp_path / timelapse.FILENAME
    labels = torch.arange(4)
    timelapse.record(path, frames(0.0), labels, step=100, wall_s=1.5, loss=9.0)
    t = timelapse.record(path, frames(1.0)[:, None], labels, step=200, wall_s=3.0, loss=4.0)  # (N, 1, H, W) too
    assert t.step.tolist() == [100, 200] and t.wall_s.tolist() == [1.5, 3.0] and t.loss.tolist() == [9.0, 4.0]
    back = timelapse.load(path)
    assert back.images.dtype == torch.uint8 and back.images.shape == (2, 4, 6, 6)
    assert back.labels.tolist() == [0, 1, 2, 3]
    assert torch.equal(back.frame(0), torch.zeros(4, 6, 6)) and torch.equal(back.frame(1), torch.ones(4, 6, 6))
    with pytest.raises(IndexError, match="out of range"):
        back.frame(2)


def test_a_resumed_run_replaces_frames_it_records_again(tmp_path):
    path = tmp_path / timelapse.FILENAME
    for step in (100, 200, 300):
        timelapse.record(path, frames(step / 1000), None, step=step, wall_s=step, loss=1.0)
    t = timelapse.record(path, frames(0.9), None, step=200, wall_s=250, loss=0.5)  # resumed from the step-100 checkpoint
    assert t.step.tolist() == [100, 200] and t.wall_s.tolist() == [100, 250]
    assert t.labels.tolist() == [-1] * 4                                          # unconditional


def test_thinning_keeps_first_and_last_within_the_budget(tmp_path):
    path = tmp_path / timelapse.FILENAME
    per_frame = 4 * 6 * 6
    for step in range(1, 11):
        t = timelapse.record(path, frames(0.5), None, step=step, wall_s=step, loss=1.0, max_bytes=5 * per_frame)
    assert t.images.numel() <= 5 * per_frame
    assert t.step[0] == 1 and t.step[-1] == 10 and bool((t.step[1:] > t.step[:-1]).all())


def test_frame_shape_must_match(tmp_path):
    path = tmp_path / timelapse.FILENAME
    timelapse.record(path, frames(0.0), None, step=1, wall_s=0, loss=0)
    with pytest.raises(ValueError, match="frame shape"):
        timelapse.record(path, frames(0.0, n=5), None, step=2, wall_s=0, loss=0)


def test_load_refuses_inconsistent_or_foreign_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"images": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "labels": torch.zeros(3, dtype=torch.long),
               "step": torch.zeros(3, dtype=torch.long), "wall_s": torch.zeros(2, dtype=torch.float64),
               "loss": torch.zeros(2, dtype=torch.float64)}, str(bad))
    with pytest.raises(ValueError, match="do not match"):
        timelapse.load(bad)
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="not a time-lapse"):
        timelapse.load(other)
    pickled = tmp_path / "p.safetensors"                 # a pickle under a .safetensors name: refused by its bytes
    pickled.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    with pytest.raises(UnsafeWeightsError, match="pickle"):
        timelapse.load(pickled)
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(CorruptWeightsError):
        timelapse.load(truncated)
    with pytest.raises(UnsafeWeightsError):
        timelapse.load(tmp_path / "timelapse.pt")
