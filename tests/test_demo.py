"""`make demo` runs demo.py: keep it working end to end."""

import os
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "demo.py"


def test_demo_runs_end_to_end(tmp_path):
    result = subprocess.run(
        [sys.executable, str(DEMO)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pipeline on the RGB photo: same scores as AutoModel" in result.stdout
    assert (tmp_path / "demo_output" / "unimed-clip-tiny" / "model.safetensors").is_file()
