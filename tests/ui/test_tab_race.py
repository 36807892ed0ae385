"""Sampler race tab (ui/tab_race.py) end to end through gradio_client on the tiny app: every sampler at one NFE
budget, ranked, with the benchmark's figure where one exists; bad input named."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client.exceptions import AppError  # noqa: E402


def _img(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_race_streams_every_sampler_and_ranks_them(client):
    outs = list(client.submit("pixel-cond", 3, 4, 2.0, 0, 1, api_name="/race"))
    assert len(outs) >= 2
    board, table, what = outs[-1]
    assert "budget 4 NFE" in what and "seed 0" in what
    lines = [line for line in table.splitlines() if line.startswith("| ") and "sampler" not in line]
    names = [line.split("|")[2].strip() for line in lines]
    assert set(names) == {"dpmpp_2m", "dpmpp_2m_sde", "heun", "euler_maruyama", "predictor_corrector", "ddim",
                          "euler_ancestral", "rk45"}
    nfes = {line.split("|")[2].strip(): int(line.split("|")[4]) for line in lines}
    assert nfes["dpmpp_2m"] == 4 and nfes["heun"] == 3 and nfes["predictor_corrector"] == 4   # heun 2 steps, pc 2
    assert all(v <= 4 for v in nfes.values())
    places = [line.split("|")[1].strip() for line in lines]
    assert places[:7] == ["1", "2", "3", "4", "5", "6", "7"]                  # rk45 cannot finish in 4 NFE
    assert "did not finish within 4 NFE" in table and "not measured" in table
    assert _img(board).shape[1] > 8 * 140                                     # eight panels side by side


def test_race_shows_the_benchmark_figure_where_one_exists():
    from ui.tab_race import bench_quality, quality_text

    assert quality_text(bench_quality("pixel-cond", "dpmpp_2m", 10, 2.0)).startswith("FD 5.16 (N=1000)")
    assert quality_text(bench_quality("pixel-cond", "dpmpp_2m", 11, 2.0)) == "not measured"


@pytest.mark.parametrize("param, value", [("model", "pixel-huge"), ("digit", 10), ("nfe", 1), ("nfe", 201),
                                          ("nfe", "x"), ("guidance", -1), ("seed", 1.5), ("num_images", 10)])
def test_race_rejects_bad_input(client, param, value):
    args = dict(model="pixel-cond", digit=3, nfe=4, guidance=2.0, seed=0, num_images=1)
    args[param] = value
    with pytest.raises(AppError, match=param):
        client.predict(*args.values(), api_name="/race")
