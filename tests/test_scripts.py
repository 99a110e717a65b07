"""The scripts behind `make demo` and `make bench` keep working."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_demo_runs_end_to_end(tmp_path):
    result = run(str(ROOT / "demo.py"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pipeline on the RGB photo: same scores as AutoModel" in result.stdout
    assert (tmp_path / "demo_output" / "unimed-clip-tiny" / "model.safetensors").is_file()


@pytest.mark.parametrize("script", ["bench_model.py", "bench_eval.py"])
def test_benchmark_scripts_start(tmp_path, script):
    result = run(str(ROOT / "bench" / script), "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--variant" in result.stdout
