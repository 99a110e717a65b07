"""bench/gpu_check.sh starts, parses its arguments and plans commands that its parts accept, on a machine without a
GPU; bench/gpu_report.py turns the parts' results into one JSON and the table."""

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unimedclip.training.config import parse_args

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def gpu_check(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, env=environment)


def bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return module


def test_help_and_bad_arguments():
    usage = gpu_check("--help")
    assert usage.returncode == 0 and "bash bench/gpu_check.sh [--output DIR] [--dry-run] [--smoke]" in usage.stdout
    assert "set -u" not in usage.stdout
    unknown = gpu_check("--repeats", "3")
    assert unknown.returncode == 2 and "unknown option '--repeats'" in unknown.stderr
    missing = gpu_check("--output")
    assert missing.returncode == 2 and "--output needs a directory" in missing.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_refuses_to_run_without_a_gpu(tmp_path):
    result = gpu_check("--output", str(tmp_path / "out"))
    assert result.returncode == 1 and "no CUDA GPU visible" in result.stderr and "--smoke" in result.stderr
    assert not (tmp_path / "out" / "status.tsv").exists()


@pytest.mark.parametrize("mode", [[], ["--smoke"]], ids=["gpu", "smoke"])
def test_dry_run_plans_commands_that_every_part_accepts(tmp_path, mode):
    """Every planned command's arguments go through the part's own parser (train.py's: the whole configuration,
    from the YAML the script writes)."""
    result = gpu_check("--dry-run", *mode, "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    planned = {}
    for line in result.stdout.splitlines():
        name, command = line.split("] ", 1)
        planned[name.removeprefix("[")] = shlex.split(command)
    parts = ["data", "b16", "b16_compile", "l14", "train", "train_device_decode", "sync", "report"]
    assert list(planned) == [part for part in parts if not (mode and part == "b16_compile")]
    assert not (tmp_path / "out" / "status.tsv").exists()  # nothing ran
    parsers = {name: bench_module(name).build_parser() for name in ("bench_data", "bench_train")}
    for name, (python, script, *arguments) in planned.items():
        assert python == sys.executable
        if Path(script).name == "train.py":
            config, _ = parse_args(arguments)
            steps = {"train": 3, "train_device_decode": 2} if mode else {"train": 200, "train_device_decode": 100}
            assert config.total_steps == steps[name]
            assert config.decode_on_device == (name == "train_device_decode")
            assert config.init == "scratch" and config.mixed_precision == ("no" if mode else "bf16")
        elif script.endswith("profile_sync.py"):
            options, train_arguments = bench_module("profile_sync").split_arguments(arguments)
            assert options.output == tmp_path / "out" / "sync.json"
            assert parse_args(train_arguments)[0].log_every == (2 if mode else 4)
        elif not script.endswith("gpu_report.py"):
            parsers[Path(script).stem].parse_args(arguments)
    b16 = parsers["bench_train"].parse_args(planned["b16"][2:])
    assert b16.batch_size == (2 if mode else 128) and b16.dtype == ("float32" if mode else "bfloat16")
    if not mode:
        assert [c["name"] for c in b16.ours] == ["eager", "sdpa", "sdpa+pooled"]
        compiled = parsers["bench_train"].parse_args(planned["b16_compile"][2:])
        assert [c["name"] for c in compiled.ours] == ["sdpa+compile"] and compiled.tag == "compile"
        assert parsers["bench_train"].parse_args(planned["l14"][2:]).activation_checkpointing


def test_report_collects_the_parts_into_one_json_and_a_table(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    (tmp_path / "status.tsv").write_text("data\t0\t40\nb16\t0\t150\nl14\t124\t150\n")
    result = {"pairs_per_s": 100.0, "ratio": 1.0, "peak_memory_gib": 30.0, "mfu": 0.2, "model_tflops_per_s": 1.0}
    bench = {
        "config": {"batch_size": "128", "dtype": "bfloat16", "device_name": "NVIDIA H100 80GB HBM3"},
        "results": {
            "open_clip": result,
            "sdpa": {**result, "pairs_per_s": 180.0, "ratio": 1.8, "mfu": 0.4},
        },
    }
    (tmp_path / "train_b16_cuda_bfloat16_bs128.json").write_text(json.dumps(bench))
    compiled = {**bench, "results": {"open_clip": result, "sdpa+compile": {**result, "ratio": 2.15, "mfu": 0.48}}}
    (tmp_path / "train_b16_cuda_bfloat16_bs128_compile.json").write_text(json.dumps(compiled))
    loader = {"loader": {"16 workers, worker decoding": {"samples_per_s": 150.0}}}
    (tmp_path / "loader.json").write_text(json.dumps(loader))
    (tmp_path / "sync.json").write_text(json.dumps({"unexpected": {"7": {"aten::_local_scalar_dense": 1}}}))
    writer = SummaryWriter(tmp_path / "train" / "logs" / "unimed-clip")
    for step, rate in enumerate([50.0, 170.0, 190.0, 180.0]):
        writer.add_scalar("perf/samples_per_s", rate, step)
        writer.add_scalar("perf/mfu", rate / 400, step)
    writer.close()

    bench_module("gpu_report").main([str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["parts"]["l14"] == {"status": 124, "seconds": 150} and report["l14"] is None
    medians = {"samples_per_s": 180.0, "mfu": pytest.approx(0.45)}  # after the first interval (start-up)
    assert report["train"]["train"] == medians
    assert list(report["b16"]["results"]) == ["open_clip", "sdpa", "sdpa+compile"]  # the two runs merged
    table = bench_module("gpu_report").table(report)
    assert "B/16 best: sdpa+compile, 2.15x open_clip (target 2x)" in table
    assert "B/16 MFU best: sdpa+compile, 48.0%" in table
    assert "loader, 16 workers, worker decoding: 150.0 samples/s is SLOWER than the step (180.0)" in table
    assert "other than to log: [7]" in table and "parts failed: l14" in table
