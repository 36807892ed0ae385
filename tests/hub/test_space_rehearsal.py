"""The Space rehearsed from its own file list (train/rehearse_space.py): the folder holds exactly what a deploy
uploads, the requirements are the Space's (plus gradio at the card's sdk_version), and, slow, a fresh environment
starts app.py there with no network and Chromium gets digits from Generate (issue 23)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from train.deploy_space import front_matter, space_upload, write_space
from train.rehearse_space import CHROMIUM, rehearse, space_requirements

ROOT = Path(__file__).resolve().parents[2]


def test_the_rehearsal_folder_holds_exactly_the_upload_set(tmp_path):
    files = space_upload(ROOT)
    space = write_space(tmp_path / "space", files)
    written = {p.relative_to(space).as_posix() for p in space.rglob("*") if p.is_file()}
    assert written == set(files)
    assert (space / "README.md").read_bytes() == files["README.md"]
    assert (space / "requirements.txt").read_bytes() == (ROOT / "space" / "requirements.txt").read_bytes()
    assert not (space / "tests").exists() and not (space / "train").exists()   # no checkout beside the app
    with pytest.raises(ValueError, match="is not empty: the rehearsal builds the Space into an empty folder"):
        write_space(space, files)


def test_requirements_are_the_spaces_with_gradio_from_the_card(tmp_path):
    space = write_space(tmp_path / "space", space_upload(ROOT))
    sdk = front_matter((space / "README.md").read_text(encoding="utf-8"))["sdk_version"]
    as_written, pin = space_requirements(space, "index")
    assert pin is None and "--extra-index-url https://download.pytorch.org/whl/cpu" in as_written
    assert any(line.startswith("torch==") and line.endswith("+cpu") for line in as_written)
    assert as_written[-1] == f"gradio=={sdk}"
    linked, pin = space_requirements(space, "host")
    torch_line = next(line for line in as_written if line.startswith("torch=="))
    assert pin == torch_line.split("==")[1].split("+")[0]
    assert linked == [line for line in as_written if not line.startswith(("--extra-index-url", "torch=="))]


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.is_file(), reason="no /usr/bin/chromium (apt-get install chromium)")
def test_the_space_starts_from_its_own_files_offline_and_generates(tmp_path, capfd):
    """The whole rehearsal: about 1 min with a warm wheelhouse on the 2-core build machine (the first run also
    downloads ~140 MB of wheels into ~/.cache/mnist-diffusion-lab/space-wheels)."""
    pytest.importorskip("playwright.sync_api")
    started = time.monotonic()
    rc = rehearse(tmp_path / "work")
    out = capfd.readouterr().out          # the app and the browser run in a child process (its own namespace)
    assert rc == 0, out[-4000:]
    assert "Generate: the final image appeared" in out and "status: Done" in out and " NFE" in out
    assert (tmp_path / "work" / "rehearsal.png").stat().st_size > 10_000
    print(f"rehearsal: {time.monotonic() - started:.0f} s")
