"""The scripts behind `make demo` and `make bench` keep working."""

import json
import math
import os
import re
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


# Each benchmark at its smallest size (about four minutes together): the figure it reports is a finite, positive
# ratio, read from the JSON it writes (a pipeline that skips every sample or times nothing shows as zero or NaN).
BENCHMARKS = {
    "bench_model.py": (["--batch-size", "1", "--repeats", "1"], "model_*.json", ("ratio",)),
    "bench_eval.py": (
        ["--images", "4", "--batch-size", "2", "--classes", "2", "--prompts-per-class", "2"],
        "eval_*.json",
        ("ratio",),
    ),
    "bench_processor.py": (["--images", "2", "--batch-size", "2", "--repeats", "1"], "processor_*.json", ("speedup",)),
    "bench_embed.py": (["--images", "2", "--batch-size", "2", "--num-workers", "0"], "embed_*.json", ("speedup",)),
    "bench_search.py": (["--vectors", "1000", "--queries", "2"], "search.json", ("median_ms", "recall")),
    "bench_train.py": (
        [
            "--batch-size",
            "1",
            "--rounds",
            "1",
            "--steps",
            "1",
            "--threads",
            "1",
            "--min-tokens",
            "8",
            "--max-tokens",
            "16",
        ],
        "train_*.json",
        ("ratio",),
    ),
    "bench_finetune.py": (
        ["--batch-size", "1", "--classes", "2", "--steps", "1", "--methods", "open_clip-full", "full"],
        "finetune_*.json",
        ("ours_full_vs_open_clip_full_speed",),
    ),
    "bench_data.py": (
        ["--samples", "16", "--shard-size", "8", "--short-side", "64", "--image-size", "32", "--batch-size", "4"]
        + ["--loader-workers", "0", "1"],
        "*.json",
        ("samples_per_s",),
    ),
}


def figures(report, keys: tuple[str, ...]) -> list:
    """Every value under one of `keys`, at any depth of the report."""
    if isinstance(report, dict):
        found = [value for key, value in report.items() if key in keys]
        return found + [figure for value in report.values() for figure in figures(value, keys)]
    if isinstance(report, list):
        return [figure for value in report for figure in figures(value, keys)]
    return []


def test_the_demo_replaces_its_own_output_and_refuses_any_other_folder(tmp_path):
    sys.path.insert(0, str(ROOT))
    try:
        from demo import MARKER, prepare_output
    finally:
        sys.path.remove(str(ROOT))
    output = tmp_path / "demo"
    prepare_output(output)
    (output / "run" / "checkpoints").mkdir(parents=True)  # what a finished demo leaves
    prepare_output(output)
    assert sorted(path.name for path in output.iterdir()) == [MARKER]
    mine = tmp_path / "mine"
    (mine / "results").mkdir(parents=True)
    with pytest.raises(SystemExit, match="not written by the demo"):
        prepare_output(mine)
    assert (mine / "results").is_dir()


@pytest.mark.parametrize("script", BENCHMARKS)
def test_benchmarks_report_a_finite_positive_figure(tmp_path, script):
    arguments, pattern, keys = BENCHMARKS[script]
    output = tmp_path / "results"
    destination = output / "data.json" if script == "bench_data.py" else output
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *arguments, "--output", str(destination)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (path,) = output.glob(pattern)
    values = figures(json.loads(path.read_text()), keys)
    assert values and all(isinstance(value, float) and math.isfinite(value) and value > 0 for value in values), values


def test_data_benchmark_compares_both_pipelines(tmp_path):
    arguments = [
        "--samples",
        "16",
        "--shard-size",
        "8",
        "--short-side",
        "64",
        "--image-size",
        "32",
        "--batch-size",
        "4",
    ]
    result = run(str(ROOT / "bench" / "bench_data.py"), *arguments, "--repeats", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ratio = float(re.search(r"ratio ours / baseline: ([0-9.]+)x", result.stdout).group(1))
    assert ratio > 0 and "16 samples" in result.stdout


@pytest.mark.parametrize("script", ["profile_sync.py", "gpu_report.py"])
def test_gpu_check_helpers_start(tmp_path, script):
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
