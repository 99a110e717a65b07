"""Throughput of UniMedCLIPModel vs the original architecture (pip open_clip `CustomTextCLIP`), same weights, same run.

    python bench/bench_model.py [--variant b16] [--batch-size 8] [--device cpu|cuda] [--dtype float32|bfloat16]

Measures images+captions per second for
  * inference at equal padding (both 256 tokens, as the original pads every caption),
  * a training step (forward + contrastive loss + backward): open_clip padded to 256 tokens as the original trains,
    ours with dynamic padding to the longest caption of the batch,
and writes the figures and the ours/open_clip ratios to bench/results/. Caption lengths are drawn uniformly from
--min-tokens..--max-tokens (defaults 20..80 tokens, typical of UniMed captions), padded to 256 for open_clip.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modeling_unimedclip import UniMedCLIPModel  # noqa: E402
from modeling_unimedclip.processing_unimedclip import CONTEXT_LENGTH  # noqa: E402
from unimedclip.release.original_format import open_clip_to_hf  # noqa: E402
from unimedclip.variants import VARIANTS  # noqa: E402


def build_models(variant: str, bert_dir: Path) -> tuple[torch.nn.Module, UniMedCLIPModel]:
    config = VARIANTS[variant].config()
    config.text_config.save_pretrained(bert_dir)
    vision = config.vision_config
    reference = open_clip.CustomTextCLIP(
        embed_dim=config.projection_dim,
        quick_gelu=True,
        vision_cfg=dict(
            image_size=vision.image_size,
            patch_size=vision.patch_size,
            width=vision.hidden_size,
            layers=vision.num_hidden_layers,
            head_width=64,
            mlp_ratio=4.0,
        ),
        text_cfg=dict(
            hf_model_name=str(bert_dir),
            hf_tokenizer_name=str(bert_dir),
            hf_proj_type="mlp",
            hf_pooler_type="cls_last_hidden_state_pooler",
            hf_model_pretrained=False,
            context_length=CONTEXT_LENGTH,
        ),
    )
    ours = UniMedCLIPModel(config)
    weights, unconsumed = open_clip_to_hf(reference.state_dict())
    assert not unconsumed
    ours.load_state_dict(weights)
    return reference, ours


def captions(batch_size: int, min_tokens: int, max_tokens: int, vocab_size: int, generator: torch.Generator):
    """Random token ids framed by [CLS]/[SEP]: (padded to 256, dynamically padded, attention mask)."""
    lengths = torch.randint(min_tokens, max_tokens + 1, (batch_size,), generator=generator)
    padded = torch.zeros(batch_size, CONTEXT_LENGTH, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        padded[row, :length] = torch.randint(1000, vocab_size, (length,), generator=generator)
        padded[row, 0], padded[row, length - 1] = 2, 3
    dynamic = padded[:, : int(lengths.max())]
    return padded, dynamic, (dynamic != 0).long()


def synthetic_batch(
    ours: UniMedCLIPModel, batch_size: int, min_tokens: int, max_tokens: int, device: torch.device, generator
) -> tuple[torch.Tensor, ...]:
    """Random images and captions on `device`: (pixel_values, captions padded to 256, dynamically padded, mask)."""
    size = ours.config.vision_config.image_size
    pixel_values = torch.randn(batch_size, 3, size, size, generator=generator)
    texts = captions(batch_size, min_tokens, max_tokens, ours.config.text_config.vocab_size, generator)
    return tuple(tensor.to(device) for tensor in (pixel_values, *texts))


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    logits = logit_scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def timed(step, repeats: int, device: torch.device) -> float:
    """Median seconds per call after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="b16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-tokens", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)

    with tempfile.TemporaryDirectory() as bert_dir:
        reference, ours = build_models(args.variant, Path(bert_dir))
    reference.to(device), ours.to(device)
    pixel_values, padded, dynamic, mask = synthetic_batch(
        ours, args.batch_size, args.min_tokens, args.max_tokens, device, generator
    )
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def reference_forward():
        with torch.no_grad(), autocast:
            reference(pixel_values, padded)

    def ours_forward():
        with torch.no_grad(), autocast:
            ours(input_ids=padded, pixel_values=pixel_values)

    def reference_train_step():
        reference.zero_grad(set_to_none=True)
        with autocast:
            image_features, text_features, logit_scale = reference(pixel_values, padded)
            loss = clip_loss(image_features, text_features, logit_scale)
        loss.backward()

    def ours_train_step():
        ours.zero_grad(set_to_none=True)
        with autocast:
            loss = ours(input_ids=dynamic, attention_mask=mask, pixel_values=pixel_values, return_loss=True).loss
        loss.backward()

    reference.eval(), ours.eval()
    results = {
        "inference_equal_padding": (
            timed(reference_forward, args.repeats, device),
            timed(ours_forward, args.repeats, device),
        )
    }
    reference.train(), ours.train()
    results["train_step_dynamic_padding"] = (
        timed(reference_train_step, args.repeats, device),
        timed(ours_train_step, args.repeats, device),
    )

    report = {
        "config": {
            **vars(args),
            "output": str(args.output),
            "dynamic_length": dynamic.shape[1],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        },
        "results": {},
    }
    print(f"{args.variant}, batch {args.batch_size}, {args.device} {args.dtype}, dynamic length {dynamic.shape[1]}")
    print(f"{'measurement':32s} {'open_clip pairs/s':>18s} {'ours pairs/s':>14s} {'ratio':>7s}")
    for name, (reference_seconds, ours_seconds) in results.items():
        reference_rate, ours_rate = args.batch_size / reference_seconds, args.batch_size / ours_seconds
        report["results"][name] = {
            "open_clip_pairs_per_s": reference_rate,
            "ours_pairs_per_s": ours_rate,
            "ratio": ours_rate / reference_rate,
        }
        print(f"{name:32s} {reference_rate:18.2f} {ours_rate:14.2f} {ours_rate / reference_rate:6.2f}x")
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"model_{args.variant}_{args.device}_{args.dtype}_bs{args.batch_size}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
