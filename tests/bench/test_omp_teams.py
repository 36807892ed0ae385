"""bench/omp_teams.py: the report's figures and ratios from measured rows (the measurement itself is the script's)."""
from bench import omp_teams


def test_the_report_gives_each_case_its_times_and_slowdown():
    rows = {"default": {"alone": 0.034, "beside_idle_thread": 0.0595, "threads": 2, "idle_cpu_s": 0.008},
            "1 torch thread": {"alone": 0.047, "beside_idle_thread": 0.046, "threads": 1}}
    text = omp_teams.report(rows, "m", "cpu")
    assert "| default | 2 | 34.0 | 59.5 | 1.75x | 0.008 |" in text and "| 1 torch thread | 1 | 47.0 | 46.0 | 0.98x |" in text
    assert set(omp_teams.CASES) >= {"default", "OMP_WAIT_POLICY=PASSIVE", "1 torch thread"}


def test_the_app_package_asks_libgomp_for_a_longer_throttled_spin_before_torch_loads():
    """ui/__init__.py sets OMP_WAIT_POLICY=ACTIVE and a bounded GOMP_SPINCOUNT (setdefault) before importing torch."""
    import subprocess
    import sys
    code = ("import os; os.environ.pop('OMP_WAIT_POLICY', None); os.environ.pop('GOMP_SPINCOUNT', None); import sys; "
            "import ui; print(os.environ['OMP_WAIT_POLICY'], os.environ['GOMP_SPINCOUNT'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["ACTIVE", "300000", "True"]
    text = (omp_teams.RESULTS.parent.parent / "ui" / "__init__.py").read_text()
    assert text.index('setdefault("OMP_WAIT_POLICY"') < text.index("import torch")
