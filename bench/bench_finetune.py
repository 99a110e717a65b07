"""Fine-tuning step time and peak memory of the linear probe, LoRA and full fine-tuning at a released size, against
full fine-tuning of the original architecture (pip open_clip's image tower under the same head), same weights and
batch.

    python bench/bench_finetune.py [--variant b16] [--batch-size 8] [--classes 5] [--steps 3] [--device cpu|cuda]
                                   [--dtype float32|bfloat16]

One step is finetune.py's: forward, cross-entropy, backward, gradient clipping, AdamW with the weight-decay groups
of `unimedclip.training.optim`; our models are set up by `unimedclip.finetuning.model.prepare_for_method` (LoRA:
rank 16 on q/k/v/out projections, PEFT). Each measurement runs in a fresh process. Peak memory during the steps,
weights included: the CUDA allocator's peak, or on CPU the process's peak resident set (reset after the models are
built, Linux's /proc/self/clear_refs) less its size before the models were built, measured in a process of its own
whose allocator unmaps freed memory (which slows it, so step times come from another).
Prints seconds per step, images/s and peak memory of each, the ratios to full fine-tuning, and writes JSON to
bench/results/.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import build_models, timed  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modeling_unimedclip import UniMedCLIPForImageClassification  # noqa: E402
from unimedclip.finetuning.config import FinetuneConfig  # noqa: E402
from unimedclip.finetuning.model import prepare_for_method  # noqa: E402
from unimedclip.training.memory import peak_memory_gib  # noqa: E402
from unimedclip.training.optim import build_optimizer  # noqa: E402

MEASUREMENTS = ("open_clip-full", "full", "lora", "linear-probe")
# glibc serves large allocations from its heap once freed ones raise its dynamic mmap threshold, and keeps that memory
# resident after torch frees it: a fixed threshold maps every tensor of 128 KiB or more and unmaps it when freed, so
# that the resident set follows the memory in use (CPU memory runs only).
MEMORY_ENVIRONMENT = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


class OpenCLIPClassifier(nn.Module):
    """The original image tower under the head our classifier has: temperature x Linear(normalised embedding)."""

    def __init__(self, visual: nn.Module, classifier: UniMedCLIPForImageClassification):
        super().__init__()
        self.visual, self.classifier = visual, classifier.classifier
        self.register_buffer("scale", classifier.logit_scale.detach().exp())

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.scale * self.classifier(F.normalize(self.visual(pixel_values), dim=-1))


def resident_gib(field: str) -> float:
    """`VmRSS` (now) or `VmHWM` (peak since the last reset) of this process, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 2**20  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(args: argparse.Namespace) -> dict:
    """Build the models, then time `args.only` (in this process)."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    runtime = resident_gib("VmRSS")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as bert_dir:
        reference, clip = build_models(args.variant, Path(bert_dir))
    labels = [f"class {index}" for index in range(args.classes)]
    classifier = UniMedCLIPForImageClassification.from_zero_shot(
        clip, torch.randn(args.classes, clip.config.projection_dim), labels
    )
    del clip
    config = FinetuneConfig(model="-", output_dir="-", image_folder="-", method=args.only.removeprefix("open_clip-"))
    if args.only == "open_clip-full":
        model = OpenCLIPClassifier(reference.visual, classifier)
    else:
        model = prepare_for_method(classifier, config)
    del reference
    model.to(device).train()
    optimizer = build_optimizer(model, config, device)
    size = classifier.config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(args.batch_size, 3, size, size, generator=generator).to(device)
    targets = torch.randint(0, args.classes, (args.batch_size,), generator=generator).to(device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]

    def step() -> None:
        with autocast:
            logits = model(pixel_values) if args.only == "open_clip-full" else model(pixel_values=pixel_values).logits
        loss = F.cross_entropy(logits.float(), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:  # the peak so far is the models' build, with both text towers
        Path("/proc/self/clear_refs").write_text("5")
    seconds = timed(step, args.steps, device)
    peak = peak_memory_gib(device) if device.type == "cuda" else resident_gib("VmHWM") - runtime
    return {
        "seconds_per_step": seconds,
        "images_per_s": args.batch_size / seconds,
        "peak_memory_gib": peak,
        "trained_parameters": sum(parameter.numel() for parameter in trained),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="b16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="Timed steps (median), after one warm-up step.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=MEASUREMENTS,
        default=list(MEASUREMENTS),
        help="what to measure (default: all); full fine-tuning, the unit of the ratios, is always measured",
    )
    parser.add_argument("--only", choices=MEASUREMENTS, help=argparse.SUPPRESS)  # one measurement, in this process
    args = parser.parse_args()
    if args.only:
        print(json.dumps(measure(args)))
        return

    def run(name: str, environment: dict) -> dict:
        command = [sys.executable, __file__, *sys.argv[1:], "--only", name]
        completed = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
        if completed.returncode:
            raise SystemExit(f"{name} failed:\n{completed.stderr[-3000:]}")
        return json.loads(completed.stdout.strip().splitlines()[-1])

    results = {}
    for name in [name for name in MEASUREMENTS if name in args.methods or name == "full"]:
        results[name] = run(name, dict(os.environ))
        if args.device == "cpu":
            results[name]["peak_memory_gib"] = run(name, MEMORY_ENVIRONMENT)["peak_memory_gib"]
    full = results["full"]
    for result in results.values():
        result["time_vs_full"] = result["seconds_per_step"] / full["seconds_per_step"]
        result["memory_vs_full"] = result["peak_memory_gib"] / full["peak_memory_gib"]
    report = {
        "config": {
            **{key: str(value) for key, value in vars(args).items() if key not in ("only", "methods")},
            "methods": list(results),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        },
        "results": results,
    }
    if "open_clip-full" in results:
        speed = results["open_clip-full"]["seconds_per_step"] / full["seconds_per_step"]
        report["ours_full_vs_open_clip_full_speed"] = speed
    print(f"{args.variant}, batch {args.batch_size}, {args.classes} classes, {args.device} {args.dtype}")
    header = ("s/step", "images/s", "peak GiB", "trained", "time/full", "mem/full")
    print(f"{'':15s} " + " ".join(f"{name:>{12 if name == 'trained' else 9}s}" for name in header))
    for name, r in results.items():
        print(
            f"{name:15s} {r['seconds_per_step']:9.3f} {r['images_per_s']:9.2f} {r['peak_memory_gib']:9.2f} "
            f"{r['trained_parameters']:12,d} {r['time_vs_full']:9.2f} {r['memory_vs_full']:9.2f}"
        )
    if "ours_full_vs_open_clip_full_speed" in report:
        print(f"full fine-tuning, ours vs open_clip: {report['ours_full_vs_open_clip_full_speed']:.2f}x the speed")
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"finetune_{args.variant}_{args.device}_{args.dtype}_bs{args.batch_size}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
