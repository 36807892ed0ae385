"""The runtime requirements' lower bounds, checked by installing them (train/check_floors.py, issue 23)."""
from __future__ import annotations

from pathlib import Path

import pytest

from train.check_floors import check_floors, floors

ROOT = Path(__file__).resolve().parents[2]


def test_floors_pin_every_runtime_requirement_at_its_lower_bound(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# comment\ntorch>=2.4,<2.15\ngradio>=6.24,<6.32  # why\nhuggingface_hub>=1.0,<3\nnumpy==1.26.4\n")
    assert floors(req) == (["gradio==6.24", "huggingface_hub==1.0", "numpy==1.26.4"], "2.4")
    req.write_text("einops<0.9\n")
    with pytest.raises(ValueError, match="'einops<0.9' has no lower bound to check"):
        floors(req)


def test_the_shipped_requirements_all_have_floors():
    pins, torch_floor = floors(ROOT / "requirements.txt")
    names = {p.split("==")[0].lower().replace("_", "-") for p in pins}
    assert {"gradio", "huggingface-hub"} <= names and torch_floor


def test_a_raised_floor_must_name_a_requirement(tmp_path):
    with pytest.raises(ValueError, match=r"--at names no requirement of requirements.txt: \['no-such-package'\]"):
        check_floors(tmp_path, at=["no-such-package==1.0"])


@pytest.mark.slow
def test_the_runtime_floors_hold(tmp_path):
    """requirements.txt's lower bounds, installed together in a fresh venv, pass the Hub and deploy tests and import
    the app (tests/ui/test_app.py). Minutes the first time (wheels downloaded once into the wheelhouse)."""
    assert check_floors(tmp_path, ("tests/hub/test_hub.py", "tests/hub/test_deploy.py", "tests/ui/test_app.py")) == 0
