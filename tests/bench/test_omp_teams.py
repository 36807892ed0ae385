"""bench/omp_teams.py: the report's figures and ratios from measured rows (the measurement itself is the script's)."""
from bench import omp_teams


def test_the_report_gives_each_case_its_times_and_slowdown():
    rows = {"default": {"alone": 0.034, "beside_idle_thread": 0.0595, "threads": 2},
            "1 torch thread": {"alone": 0.047, "beside_idle_thread": 0.046, "threads": 1}}
    text = omp_teams.report(rows, "m", "cpu")
    assert "| default | 2 | 34.0 | 59.5 | 1.75x |" in text and "| 1 torch thread | 1 | 47.0 | 46.0 | 0.98x |" in text
    assert set(omp_teams.CASES) >= {"default", "OMP_WAIT_POLICY=PASSIVE", "1 torch thread"}
