"""The upload budget (issue 26, ui/uploads.py): per client address at most RATE_BYTES a minute (429 with when to
retry), and at most DISK_BUDGET bytes on disk, the oldest unreferenced files evicted first (507 when everything is
in use or too young to go)."""
from __future__ import annotations

import json
import os
import time
import types

import pytest

from app_helpers import http_request, launched
from ui import gradio_seam
from ui.event_checks import Refusal
from ui.http_limits import app_kwargs
from ui.uploads import UploadBudget, referenced_paths

MB = 2**20


def _file(folder, name: str, size: int, age_s: float):
    path = folder / name[:2] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    when = time.time() - age_s
    os.utime(path, (when, when))
    return path


def test_one_address_is_held_to_its_rate_and_told_when_to_retry(tmp_path):
    budget = UploadBudget(rate_bytes=10 * MB, window_s=60, disk_budget=100 * MB, folder=tmp_path)
    budget.admit("5.5.5.1", 4 * MB, now=0.0)
    budget.admit("5.5.5.1", 4 * MB, now=1.0)
    with pytest.raises(Refusal, match=r"at most 10 MB per 60 s from one address \(8.0 MB so far\)\. Retry in about "
                                      r"50 s") as err:
        budget.admit("5.5.5.1", 4 * MB, now=10.0)
    assert err.value.status == 429
    budget.admit("5.5.5.2", 4 * MB, now=10.0)              # another visitor is not held to the first one's rate
    budget.admit("5.5.5.1", 4 * MB, now=61.0)              # the window moved on
    budget.admit("5.5.5.3", 12 * MB, now=0.0)              # a single large upload is the size limit's business


def test_the_oldest_unreferenced_files_go_first(tmp_path):
    budget = UploadBudget(rate_bytes=100 * MB, disk_budget=10 * MB, protect_s=30, folder=tmp_path)
    oldest = _file(tmp_path, "aa-oldest.png", 3 * MB, age_s=300)
    in_use = _file(tmp_path, "bb-in-use.png", 3 * MB, age_s=400)          # older still, but a job reads it
    middle = _file(tmp_path, "cc-middle.png", 3 * MB, age_s=200)
    budget.admit("5.5.5.1", 3 * MB, referenced={os.path.realpath(in_use)})
    assert not oldest.exists() and in_use.exists() and middle.exists()  # 9 MB - 3 + 3 new = 9 <= 10
    assert budget.evicted == 1 and not oldest.parent.exists()             # its empty folder goes too


def test_a_full_disk_of_files_in_use_refuses_with_507(tmp_path):
    budget = UploadBudget(rate_bytes=100 * MB, disk_budget=8 * MB, protect_s=30, folder=tmp_path)
    young = _file(tmp_path, "aa-young.png", 4 * MB, age_s=1)              # just uploaded: its event may follow
    used = _file(tmp_path, "bb-used.png", 3 * MB, age_s=600)
    with pytest.raises(Refusal, match="upload space is full of files in use right now") as err:
        budget.admit("5.5.5.1", 2 * MB, referenced={os.path.realpath(used)})
    assert err.value.status == 507 and young.exists() and used.exists()


def test_referenced_paths_are_read_from_waiting_and_running_jobs(monkeypatch):
    data = ["drawing", {"layers": [{"path": "/tmp/up/a.png", "meta": {}}], "composite": {"path": "/tmp/up/b.png"}}]
    event = types.SimpleNamespace(data=types.SimpleNamespace(data=data))
    monkeypatch.setattr(gradio_seam, "queue_jobs", lambda blocks: [(event, False)])
    assert referenced_paths(None) == {os.path.realpath("/tmp/up/a.png"), os.path.realpath("/tmp/up/b.png")}


def _upload(served, name: str, size: int, address: str):
    boundary = "----budget"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + os.urandom(size) + f"\r\n--{boundary}--\r\n".encode()
    return http_request(served.url + "gradio_api/upload", body,
                        {"Content-Type": f"multipart/form-data; boundary={boundary}", "X-Forwarded-For": address})


def test_an_upload_flood_stays_within_the_rate_and_the_disk_budget(tiny_weights, tmp_path, monkeypatch):
    """One address sends 12 distinct 1 MB files at once against a 4 MB/min rate: 4 are kept, 8 refused in words;
    several addresses together never hold more than the disk budget."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    budget = UploadBudget(rate_bytes=4 * MB + 4096, disk_budget=6 * MB, protect_s=0.0)
    with launched(tiny_weights, launch={"app_kwargs": app_kwargs(uploads=budget)}) as served:
        answers = [_upload(served, f"f{k}.png", MB, "5.5.5.1") for k in range(12)]
        statuses = [a[0] for a in answers]
        assert statuses.count(200) == 4 and statuses.count(429) == 8, statuses
        assert "Retry in about" in json.loads(answers[-1][2])["detail"]
        for k in range(12):
            _upload(served, f"g{k}.png", MB, f"5.5.6.{k}")
        folder = gradio_seam.upload_folder()
        on_disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert on_disk <= 6 * MB + 64 * 1024, on_disk
        assert budget.evicted > 0
