"""train/training_table.py: images seen and wall time from a record, worked by hand."""
import json

from train.training_table import images_seen, table_lines, wall_minutes


def test_images_and_wall_time_by_kind_of_record(tmp_path):
    plain = {"config": {"steps": 100, "batch_size": 64}, "wall_time_s": 60.0, "total_wall_s": 600.0}
    assert images_seen(plain) == (6400, "100 × 64") and wall_minutes(plain) == 10.0      # every resumed segment
    student = {"config": {"batch_size": 64}, "stages": [{"steps": 10}, {"steps": 0, "stage": "start-from x"},
                                                        {"steps": 30}]}
    assert images_seen(student) == (2560, "40 × 64 (2 stages)")
    guide = {"config": {"steps": 9000, "batch_size": 128}, "checkpoint_step": 500, "total_wall_s": 120.0}
    assert images_seen(guide) == (64000, "500 × 128") and wall_minutes(guide) == 2.0
    (tmp_path / "pixel-cond.json").write_text(json.dumps({**plain, "device": "CPU (1 threads)"}))
    (tmp_path / "pixel-uncond-guide.json").write_text(json.dumps({**guide, "guides": "pixel-uncond"}))
    lines = table_lines(tmp_path)
    assert lines[2:] == ["| `pixel-cond` | 100 × 64 | 6,400 (0.1) | 10 min | CPU (1 thread) |",
                         "| `pixel-uncond-guide` | 500 × 128 | 64,000 (1.1) | 2 min | CPU (1 thread); an early checkpoint "
                         "of pixel-uncond's run |"]
