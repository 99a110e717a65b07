"""Profile train.py and list, step by step, the calls that make the host wait for the device.

    python bench/profile_sync.py [--output FILE.json] -- <train.py arguments>

Runs `train.train` under the PyTorch profiler (CPU, and CUDA when there is a GPU) with the given arguments (trackers
off) and prints, per optimizer step, the synchronising calls of `unimedclip.training.profiling`. Between two logging
steps a step should make none; a logging step makes one, `IntervalRecord.read`. The first step includes the setup,
the last the final checkpoint. On the CPU, AdamW's own reads of its step counts (host tensors there) show inside the
optimizer step; on CUDA the fused AdamW keeps them on the device. Exits with status 1 if a step between the first and
the last waits anywhere else.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train  # noqa: E402
from unimedclip.training.config import parse_args  # noqa: E402
from unimedclip.training.profiling import synchronising_calls_per_step, unexpected_waits  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--output", type=Path, help="JSON of the calls per step")
    return parser


def split_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(this script's options, train.py's arguments): those before and after `--`."""
    split = argv.index("--") if "--" in argv else len(argv)
    parser = build_parser()
    options = parser.parse_args(argv[:split])
    if split == len(argv):
        parser.error("give train.py's arguments after --")
    return options, argv[split + 1 :]


def main(argv: list[str] | None = None) -> None:
    args, train_args = split_arguments(sys.argv[1:] if argv is None else argv)
    config, _ = parse_args([*train_args, "--report-to", "none"])
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        train.train(config)
    per_step = synchronising_calls_per_step(profile.events())
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    first_step = config.total_steps - len(per_step)
    for step, calls in enumerate(per_step, start=first_step + 1):
        print(f"step {step:4d}: {dict(calls) or 'no synchronising call'}")
    unexpected = unexpected_waits(per_step, config.log_every, device_type, first_step)
    print(f"steps that wait other than as designed: {sorted(unexpected) or 'none'}")
    if args.output:
        report = {
            "device": device_type,
            "log_every": config.log_every,
            "calls_per_step": [dict(calls) for calls in per_step],
            "unexpected": {str(step): calls for step, calls in unexpected.items()},
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    sys.exit(1 if unexpected else 0)


if __name__ == "__main__":
    main()
