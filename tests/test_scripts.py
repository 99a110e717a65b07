"""The scripts behind `make demo` and `make bench` keep working."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from unimedclip.training.config import parse_args

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
    result = run(str(ROOT / "demo.py"), "--output", str(tmp_path / "demo"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for stage in range(1, 9):
        assert f"[{stage}/8]" in result.stdout
    assert (tmp_path / "demo" / "classifier" / "final" / "model.safetensors").is_file()
    model_dir = tmp_path / "demo" / "run" / "final"
    card = (model_dir / "README.md").read_text()
    assert (model_dir / "model.safetensors").is_file() and "model-index:" in card and "from scratch" in card
    assert "AutoModel agrees: False" not in result.stdout and "AutoModel agrees: True" in result.stdout


@pytest.mark.parametrize(
    "script",
    ["bench_model.py", "bench_eval.py", "bench_data.py", "bench_train.py", "bench_processor.py", "bench_finetune.py"],
)
def test_benchmark_scripts_start(tmp_path, script):
    result = run(str(ROOT / "bench" / script), "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage:")


def test_slurm_example_launches_the_b16_recipe_on_every_node(tmp_path):
    """The sbatch file run with stand-ins for scontrol, srun and accelerate that record what they are given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_ins = {
        "scontrol": 'printf "gpu-node-01\\ngpu-node-02\\n"',
        "srun": 'shift; exec "$@"',  # drops --kill-on-bad-exit
        "accelerate": f'printf "%s\\n" "$@" > {tmp_path / "launch.txt"}',
    }
    for name, body in stand_ins.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-node-[01-02]"}
    env |= {"SLURM_NNODES": "4", "SLURM_NODEID": "2"}

    def launch() -> list[str]:
        command = ["bash", str(ROOT / "configs/slurm/train_b16.sbatch")]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return (tmp_path / "launch.txt").read_text().splitlines()

    arguments = launch()
    launcher = dict(
        zip(arguments[1 : arguments.index("train.py") : 2], arguments[2 : arguments.index("train.py") : 2])
    )
    assert launcher == {
        "--num_machines": "4",
        "--machine_rank": "2",
        "--main_process_ip": "gpu-node-01",
        "--main_process_port": "29500",
        "--num_processes": "16",
        "--mixed_precision": "bf16",
    }
    config, _ = parse_args(arguments[arguments.index("train.py") + 1 :])
    assert (config.data, config.output_dir, config.resume) == ("unimed-clip/UniMed", "runs/b16", None)
    assert config.batch_size == 2048 and config.accumulation_steps(world_size=16) == 1

    (tmp_path / "runs/b16/checkpoints/step-00000500").mkdir(parents=True)  # a requeued job continues the run
    assert launch()[-2:] == ["--resume", "latest"]
