"""Training throughput: our training step vs the original's (pip open_clip `CustomTextCLIP` + `ClipLoss`), same
weights, same batch, same run.

    python bench/bench_train.py [--variant b16] [--batch-size 8] [--steps 3] [--device cpu|cuda]
                                [--dtype float32|bfloat16] [--compile] [--activation-checkpointing]

One training step = forward, contrastive loss, backward, fused (GPU) AdamW step with the recipe's weight-decay groups,
`logit_scale` clamp. open_clip pads every caption to 256 tokens, as the original trained; ours pads to the longest
caption of the batch (lengths drawn from --min-tokens..--max-tokens). On GPU use `--dtype bfloat16` (autocast; our
attention is SDPA/flash) and optionally `--compile` (our towers only). Prints pairs/s for both, the ratio, and the peak
memory of each (CUDA: allocator peak; CPU: growth of the process's peak RSS, so run ours first), and writes JSON
to bench/results/.
"""

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch
from open_clip.loss import ClipLoss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import build_models, synthetic_batch, timed  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from unimedclip.training.config import build_config  # noqa: E402
from unimedclip.training.loss import ContrastiveTrainingModel, create_loss  # noqa: E402
from unimedclip.training.memory import peak_memory_gib  # noqa: E402
from unimedclip.training.optim import build_optimizer  # noqa: E402


def measure(step, repeats: int, device: torch.device) -> tuple[float, float]:
    """(seconds per step, peak memory in GiB during the steps: CUDA peak, or growth of the peak RSS on CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    before = 0.0 if device.type == "cuda" else peak_memory_gib(device)
    seconds = timed(step, repeats, device)
    return seconds, peak_memory_gib(device) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="b16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="Timed steps (median), after one warm-up step.")
    parser.add_argument("--min-tokens", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile our two towers.")
    parser.add_argument("--activation-checkpointing", action="store_true", help="In both implementations.")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)

    with tempfile.TemporaryDirectory() as bert_dir:
        reference, ours = build_models(args.variant, Path(bert_dir))
    reference.to(device).train(), ours.to(device).train()
    if args.activation_checkpointing:
        reference.set_grad_checkpointing(True)
        ours.activation_checkpointing_enable()
    if args.compile:
        ours.vision_model.compile()
        ours.text_model.compile()
    ours_training = ContrastiveTrainingModel(ours, create_loss("infonce"))
    pixel_values, padded, dynamic, mask = synthetic_batch(
        ours, args.batch_size, args.min_tokens, args.max_tokens, device, generator
    )
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    clip_loss = ClipLoss()
    recipe = build_config("b16")  # the paper's AdamW settings and weight-decay groups, for both models
    reference_optimizer = build_optimizer(reference, recipe, device)
    ours_optimizer = build_optimizer(ours_training, recipe, device)

    def reference_step():
        with autocast:
            image_features, text_features, logit_scale = reference(pixel_values, padded)
            loss = clip_loss(image_features, text_features, logit_scale)
        loss.backward()
        reference_optimizer.step()
        reference_optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            reference.logit_scale.clamp_(0, math.log(100))

    def ours_step():
        with autocast:
            loss, _ = ours_training(pixel_values, dynamic, mask)
        loss.backward()
        ours_optimizer.step()
        ours_optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            ours.logit_scale.clamp_(0, math.log(100))

    ours_seconds, ours_memory = measure(ours_step, args.steps, device)
    reference_seconds, reference_memory = measure(reference_step, args.steps, device)
    ours_rate, reference_rate = args.batch_size / ours_seconds, args.batch_size / reference_seconds
    report = {
        "config": {
            **{key: str(value) for key, value in vars(args).items()},
            "dynamic_length": dynamic.shape[1],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        },
        "results": {
            "open_clip_pairs_per_s": reference_rate,
            "ours_pairs_per_s": ours_rate,
            "ratio": ours_rate / reference_rate,
            "open_clip_peak_memory_gib": reference_memory,
            "ours_peak_memory_gib": ours_memory,
        },
    }
    options = [name for name in ("compile", "activation_checkpointing") if getattr(args, name)]
    print(f"{args.variant}, batch {args.batch_size}, {args.device} {args.dtype}, dynamic length {dynamic.shape[1]}")
    print(f"options: {', '.join(options) or 'none'}")
    print(f"{'':10s} {'pairs/s':>9s} {'peak GiB':>9s}")
    print(f"{'open_clip':10s} {reference_rate:9.2f} {reference_memory:9.2f}")
    print(f"{'ours':10s} {ours_rate:9.2f} {ours_memory:9.2f}")
    print(f"ratio ours/open_clip: {ours_rate / reference_rate:.2f}x")
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"train_{args.variant}_{args.device}_{args.dtype}_bs{args.batch_size}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
