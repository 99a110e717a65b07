"""The report of bench/gpu_check.sh: one JSON of every part's figures, and a table.

    python bench/gpu_report.py DIR

Reads what the parts left in DIR (status.tsv, loader.json, train_*.json of bench_train.py, the TensorBoard logs of the
train.py runs, sync.json), writes DIR/gpu_check.json and prints the table with the issue's targets: B/16 at least 2x
open_clip's pairs/s, MFU at least 45 % on an H100-class GPU, the loader ahead of the step, no host synchronisation
between logging steps.
"""

import argparse
import json
import statistics
from pathlib import Path

TARGET_SPEEDUP, TARGET_MFU = 2.0, 0.45
TRAIN_RUNS = {"train": "worker decoding", "train_device_decode": "GPU decoding"}


def bench_results(directory: Path, variant: str) -> dict | None:
    """The bench_train.py results of `variant`, its runs merged (the reference of the first run kept)."""
    merged = None
    for path in sorted(directory.glob(f"train_{variant}_*.json")):
        run = json.loads(path.read_text())
        if merged is None:
            merged = run
        else:
            merged["results"] |= {name: result for name, result in run["results"].items() if name != "open_clip"}
    return merged


def train_run(directory: Path) -> dict | None:
    """Medians over the logged intervals of a train.py run, the first (start-up, compilation) left out."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((directory / "logs").rglob("events.out.tfevents.*"))
    if not events:
        return None
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    run = {}
    for tag in ("perf/samples_per_s", "perf/mfu", "perf/data_wait_fraction", "perf/peak_memory_gib", "train/loss"):
        if tag in tags:
            values = [event.value for event in accumulator.Scalars(tag)]
            steady = values[1:] or values
            run[tag.split("/")[1]] = statistics.median(steady) if tag != "train/loss" else values[-1]
    return run


def collect(directory: Path) -> dict:
    status = {}
    if (directory / "status.tsv").is_file():
        for line in (directory / "status.tsv").read_text().splitlines():
            name, code, seconds = line.split("\t")
            status[name] = {"status": int(code), "seconds": int(seconds)}

    def read(name: str) -> dict | None:
        return json.loads((directory / name).read_text()) if (directory / name).is_file() else None

    return {
        "parts": status,
        "b16": bench_results(directory, "b16"),
        "l14": bench_results(directory, "l14-336-base"),
        "loader": read("loader.json"),
        "train": {name: train_run(directory / name) for name in TRAIN_RUNS if (directory / name).is_dir()},
        "sync": read("sync.json"),
    }


def table(report: dict) -> str:
    lines = [f"{'measurement':52s} {'pairs/s':>9s} {'vs open_clip':>12s} {'peak GiB':>9s} {'MFU':>6s}"]

    def row(name: str, pairs: float | None, ratio=None, memory=None, mfu=None) -> None:
        def cell(value, form: str, width: int) -> str:
            return format(value, form).rjust(width) if value is not None else "-".rjust(width)

        lines.append(
            f"{name:52s} {cell(pairs, '.1f', 9)} {cell(ratio, '.2f', 11)}{'x' if ratio else ' '} "
            f"{cell(memory, '.1f', 9)} {cell(mfu, '.1%', 6)}"
        )

    for key, title in (("b16", "B/16"), ("l14", "L/14-336, activation checkpointing")):
        bench = report[key]
        if not bench:
            lines.append(f"{title}: no result")
            continue
        config = bench["config"]
        lines.append(f"{title}, micro-batch {config['batch_size']}, {config['dtype']}, {config['device_name']}")
        for name, result in bench["results"].items():
            label = "open_clip (reference)" if name == "open_clip" else f"ours, {name}"
            row(f"  {label}", result["pairs_per_s"], result["ratio"], result["peak_memory_gib"], result["mfu"])
    if report["loader"]:
        for name, result in report["loader"]["loader"].items():
            row(f"loader alone, {name}", result["samples_per_s"])
    for name, run in report["train"].items():
        if run:
            memory, mfu = run.get("peak_memory_gib"), run.get("mfu")
            row(f"train.py B/16, {TRAIN_RUNS[name]}", run.get("samples_per_s"), None, memory, mfu)
            lines.append(f"  {'':50s} data wait {run.get('data_wait_fraction', float('nan')):.1%} of the step time")
    lines.append("")
    lines += verdicts(report)
    return "\n".join(lines)


def verdicts(report: dict) -> list[str]:
    found = []
    b16 = report["b16"]
    if b16:
        ours = {name: result for name, result in b16["results"].items() if name != "open_clip"}
        best = max(ours, key=lambda name: ours[name]["ratio"])
        found.append(f"B/16 best: {best}, {ours[best]['ratio']:.2f}x open_clip (target {TARGET_SPEEDUP:.0f}x)")
        mfus = {name: result["mfu"] for name, result in ours.items() if result["mfu"] is not None}
        if mfus:
            top = max(mfus, key=mfus.get)
            found.append(f"B/16 MFU best: {top}, {mfus[top]:.1%} (target {TARGET_MFU:.0%} on H100-class GPUs)")
        step_rate = ours.get("sdpa", ours[best])["pairs_per_s"]
        if report["loader"]:
            for name, result in report["loader"]["loader"].items():
                keeps_up = "keeps up" if result["samples_per_s"] >= step_rate else "is SLOWER than the step"
                found.append(f"loader, {name}: {result['samples_per_s']:.1f} samples/s {keeps_up} ({step_rate:.1f})")
    if report["sync"]:
        unexpected = report["sync"]["unexpected"]
        found.append(f"steps that wait for the device other than to log: {sorted(map(int, unexpected)) or 'none'}")
    failed = [name for name, part in report["parts"].items() if part["status"]]
    found.append(f"parts failed: {', '.join(failed) or 'none'}")
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, help="the --output directory of bench/gpu_check.sh")
    args = parser.parse_args(argv)
    report = collect(args.directory)
    (args.directory / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nWrote {args.directory / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
