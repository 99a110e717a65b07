"""Training throughput: our training step vs the original's (pip open_clip `CustomTextCLIP` + `ClipLoss` + AdamW as
the original built it), same weights, same batch, same run.

    python bench/bench_train.py [--variant b16] [--batch-size 8] [--rounds 3] [--device cpu|cuda]
                                [--dtype float32|bfloat16] [--activation-checkpointing] [--threads N]
                                [--ours sdpa compile pooled+compile ...]

One training step = forward, contrastive loss, backward, AdamW step with the recipe's weight-decay groups,
`logit_scale` clamp. open_clip pads every caption to 256 tokens and runs torch's default AdamW, as the original
trained; ours pads to the longest caption of the batch (lengths drawn from --min-tokens..--max-tokens) and runs
`build_optimizer` (torch's fused AdamW). Each entry of --ours is one configuration of our step, `+`-separated:

    eager | sdpa | flash_attention_2 | flash_attention_3   attention of both towers (default sdpa)
    compile       torch.compile the two towers, as `train.py --compile`
    pooled        proposed model change: the image tower's last layer for the class token only (exact)

The reference and every configuration share one set of weights and run in turns, `--rounds` times after a warm-up
step each; the ratio of each round (reference time / ours) is taken, and the median is reported, so that a shared
machine's load changes both sides of a ratio alike; the ratio of the fastest turns is reported too. On CUDA, time is
wall time between synchronisations, memory the allocator's peak of each configuration, and MFU counts the model
FLOPs of `training_flops_per_pair` (open_clip's at 256 tokens) against the GPU's peak; on the CPU, time is the
process's CPU time (use --threads 1 on a shared machine). Writes JSON to bench/results/.
"""

import argparse
import copy
import json
import math
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import build_models, synthetic_batch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modeling_unimedclip.processing_unimedclip import CONTEXT_LENGTH  # noqa: E402
from unimedclip.training.config import build_config  # noqa: E402
from unimedclip.training.loss import ContrastiveTrainingModel, create_loss  # noqa: E402
from unimedclip.training.memory import peak_memory_gib  # noqa: E402
from unimedclip.training.optim import build_optimizer, parameter_groups  # noqa: E402
from unimedclip.training.throughput import peak_flops, training_flops_per_pair  # noqa: E402

ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")
FEATURES = ("compile", "pooled")


def parse_configuration(name: str) -> dict:
    parts = name.split("+")
    unknown = [part for part in parts if part not in ATTENTION + FEATURES]
    attention = [part for part in parts if part in ATTENTION]
    if unknown or len(attention) > 1:
        raise argparse.ArgumentTypeError(
            f"{name!r}: combine at most one of {ATTENTION} with any of {FEATURES}, joined by '+'"
        )
    return {"name": name, "attention": attention[0] if attention else "sdpa", **{f: f in parts for f in FEATURES}}


def pooled_last_layer(layer: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """A `CLIPEncoderLayer` computed for the class token only: queries, output projection and MLP for that token,
    keys and values for all. The image embedding reads nothing else of the last layer."""
    attention = layer.self_attn
    batch = hidden_states.shape[0]
    normed = layer.layer_norm1(hidden_states)

    def heads(states: torch.Tensor) -> torch.Tensor:
        return states.view(batch, states.shape[1], -1, attention.head_dim).transpose(1, 2)

    query, key, value = attention.q_proj(normed[:, :1]), attention.k_proj(normed), attention.v_proj(normed)
    attended = F.scaled_dot_product_attention(heads(query), heads(key), heads(value), scale=attention.scale)
    cls = hidden_states[:, :1] + attention.out_proj(attended.transpose(1, 2).reshape(batch, 1, -1))
    cls = cls + layer.mlp(layer.layer_norm2(cls))
    return cls[:, 0]


def pooled_image_features(self, pixel_values: torch.Tensor, **kwargs) -> types.SimpleNamespace:
    """`get_image_features` with the last layer for the class token only (the proposed model change)."""
    vision = self.vision_model
    hidden_states = vision.pre_layrnorm(vision.embeddings(pixel_values))
    for layer in vision.encoder.layers[:-1]:
        hidden_states = layer(hidden_states, None)
    pooled = vision.post_layernorm(pooled_last_layer(vision.encoder.layers[-1], hidden_states))
    return types.SimpleNamespace(pooler_output=self.visual_projection(pooled))


def configured_model(model: torch.nn.Module, configuration: dict) -> torch.nn.Module:
    """`model` as the configuration runs it, sharing its parameters: a shallow copy whose towers may be compiled and
    whose image features may be pooled."""
    variant = copy.copy(model)
    variant._modules = dict(model._modules)  # the same parameters; tower modules of its own
    if configuration["compile"]:
        variant.vision_model = torch.compile(model.vision_model)
        variant.text_model = torch.compile(model.text_model)
    if configuration["pooled"]:
        variant.get_image_features = types.MethodType(pooled_image_features, variant)
    return variant


def measure(step, device: torch.device) -> float:
    """Seconds of one call: wall time between synchronisations on CUDA, the process's CPU time on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        torch.cuda.synchronize(device)
        return time.perf_counter() - start
    start = time.process_time()
    step()
    return time.process_time() - start


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="b16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="Timed turns of every side, after one warm-up step.")
    parser.add_argument("--steps", type=int, default=1, help="Steps per turn.")
    parser.add_argument("--min-tokens", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, help="torch threads on the CPU; default torch's.")
    parser.add_argument("--activation-checkpointing", action="store_true", help="Ours, and open_clip's image tower.")
    parser.add_argument(
        "--image-tower", action="store_true", help="Time the image tower alone: forward and backward of the embedding."
    )
    parser.add_argument("--ours", nargs="+", type=parse_configuration, default=[parse_configuration("sdpa")])
    parser.add_argument("--peak-tflops", type=float, help="Peak TFLOP/s of the device for MFU; default: the table.")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--tag", help="appended to the JSON file's name, to keep runs of other configurations apart")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)

    with tempfile.TemporaryDirectory() as bert_dir:
        reference, ours = build_models(args.variant, Path(bert_dir))
    reference.to(device).train(), ours.to(device).train()
    if args.activation_checkpointing:
        reference.visual.set_grad_checkpointing(True)  # the original checkpointed the image tower only
        ours.activation_checkpointing_enable()
    pixel_values, padded, dynamic, mask = synthetic_batch(
        ours, args.batch_size, args.min_tokens, args.max_tokens, device, generator
    )
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    recipe = build_config(args.variant)
    clip_loss = ClipLoss()
    adamw = dict(lr=recipe.lr, betas=(recipe.beta1, recipe.beta2), eps=recipe.eps)
    reference_optimizer = torch.optim.AdamW(parameter_groups(reference, recipe.weight_decay), **adamw)

    def reference_step():
        if args.image_tower:
            with autocast:
                embeddings = reference.encode_image(pixel_values)
            embeddings.float().sum().backward()
            reference.zero_grad(set_to_none=True)
            return
        with autocast:
            image_features, text_features, logit_scale = reference(pixel_values, padded)
            loss = clip_loss(image_features, text_features, logit_scale)
        loss.backward()
        reference_optimizer.step()
        reference_optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            reference.logit_scale.clamp_(0, math.log(100))

    # One optimizer serves every configuration: they train the same parameters.
    trained = ContrastiveTrainingModel(ours, create_loss("infonce"))
    optimizer = build_optimizer(trained, recipe, device)

    attention = {"current": "sdpa"}  # the models' default

    def our_step(configuration: dict):
        model = configured_model(ours, configuration)
        training_model = ContrastiveTrainingModel(model, create_loss("infonce"))

        def step():
            if attention["current"] != configuration["attention"]:
                ours.set_attn_implementation(configuration["attention"])
                attention["current"] = configuration["attention"]
            if args.image_tower:
                with autocast:
                    embeddings = model.get_image_features(pixel_values=pixel_values).pooler_output
                embeddings.float().sum().backward()
                ours.zero_grad(set_to_none=True)
                return
            with autocast:
                loss, _ = training_model(pixel_values, dynamic, mask)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                ours.logit_scale.clamp_(0, math.log(100))

        return step

    if any(configuration["pooled"] for configuration in args.ours):
        with torch.no_grad(), autocast:
            exact = ours.get_image_features(pixel_values=pixel_values).pooler_output
            pooled = pooled_image_features(ours, pixel_values).pooler_output
        print(f"pooled image features: largest difference {(exact - pooled).abs().max().item():.2e}")

    sides = {"open_clip": reference_step, **{c["name"]: our_step(c) for c in args.ours}}
    seconds = {name: [] for name in sides}
    memory = {name: 0.0 for name in sides}
    for round_index in range(args.rounds + 1):  # round 0 warms up (and compiles)
        for name, step in sides.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            elapsed = sum(measure(step, device) for _ in range(args.steps)) / args.steps
            if round_index:
                seconds[name].append(elapsed)
            if device.type == "cuda":
                memory[name] = max(memory[name], peak_memory_gib(device))
        print(f"round {round_index}: " + ", ".join(f"{name} {s[-1]:.3f} s" for name, s in seconds.items() if s))

    peak = peak_flops(device, args.peak_tflops)

    def step_flops(text_length: int) -> float:
        return training_flops_per_pair(ours.config, text_length, negatives=args.batch_size) * args.batch_size

    flops = {"open_clip": step_flops(CONTEXT_LENGTH), **{c["name"]: step_flops(dynamic.shape[1]) for c in args.ours}}
    if args.image_tower:  # no MFU: the formula counts whole steps
        flops = dict.fromkeys(flops)
    results = {}
    for name, times in seconds.items():
        median = statistics.median(times)
        ratios = [reference / ours for reference, ours in zip(seconds["open_clip"], times, strict=True)]
        results[name] = {
            "seconds_per_step": median,
            "pairs_per_s": args.batch_size / median,
            "ratio": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)],
            "ratio_of_best": min(seconds["open_clip"]) / min(times),
            "peak_memory_gib": memory[name] if device.type == "cuda" else None,
            "mfu": flops[name] / median / peak if peak and flops[name] else None,
            "model_tflops_per_s": flops[name] / median / 1e12 if flops[name] else None,
        }
    report = {
        "config": {
            **{key: str(value) for key, value in vars(args).items() if key != "ours"},
            "ours": [c["name"] for c in args.ours],
            "dynamic_length": dynamic.shape[1],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "clock": "wall" if device.type == "cuda" else "process CPU time",
        },
        "results": results,
    }
    options = "activation checkpointing, " if args.activation_checkpointing else ""
    options += "image tower alone, " if args.image_tower else ""
    print(f"\n{args.variant}, batch {args.batch_size}, {args.device} {args.dtype}, {options}caption length "
          f"{dynamic.shape[1]} (open_clip {CONTEXT_LENGTH}), medians of {args.rounds} rounds")  # fmt: skip
    header = ("pairs/s", "ours/open_clip", "rounds", "best", "peak GiB", "MFU")
    print(f"{'':28s} " + " ".join(text.rjust(width) for text, width in zip(header, (9, 15, 11, 6, 9, 6))))
    for name, result in results.items():
        memory_text = f"{result['peak_memory_gib']:9.2f}" if result["peak_memory_gib"] is not None else f"{'-':>9s}"
        mfu_text = f"{result['mfu']:6.1%}" if result["mfu"] is not None else f"{'-':>6s}"
        spread = "{:.2f}-{:.2f}".format(*result["ratio_range"])
        rate, ratio = result["pairs_per_s"], result["ratio"]
        best = f"{result['ratio_of_best']:.2f}x"
        print(f"{name:28s} {rate:9.2f} {ratio:14.2f}x {spread:>11s} {best:>6s} {memory_text} {mfu_text}")
    args.output.mkdir(parents=True, exist_ok=True)
    suffix = "_ac" * args.activation_checkpointing + "_image" * args.image_tower + (f"_{args.tag}" if args.tag else "")
    path = args.output / f"train_{args.variant}_{args.device}_{args.dtype}_bs{args.batch_size}{suffix}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
