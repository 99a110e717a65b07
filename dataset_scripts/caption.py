"""Turns a classification dataset into image-caption pairs: N diverse captions per distinct label set, written by an
instruct language model (or templates), validated against the labels, cached, then mapped to every image.

    python dataset_scripts/caption.py --dataset <image folder | labels.csv | HF dataset> --modality xray \\
        --llm Qwen/Qwen2.5-7B-Instruct --n 10 --out captions.jsonl
    python dataset_scripts/caption.py ... --llm gpt-4o-mini --endpoint https://api.openai.com/v1   # $OPENAI_API_KEY
    python dataset_scripts/caption.py ... --llm template                                          # no model needed

Output: one JSON line per image, `{"path": ..., "labels": [...], "captions": [...]}`, the three columns of the
original UniMed caption CSVs. Generated captions are cached in `<out stem>.cache.jsonl` (or `--cache`): a rerun makes
no generation call and an interrupted run resumes where it stopped.
"""

import argparse
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from dataset_scripts.caption_backends import (
    CaptionBackend,
    ChatCompletionsBackend,
    PipelineBackend,
    SamplingParameters,
    TemplateBackend,
)
from dataset_scripts.caption_cache import CaptionCache, cache_key
from dataset_scripts.caption_inputs import LabelledImage, load_labelled_images
from dataset_scripts.caption_prompts import caption_modalities, findings_of, prompt_version
from dataset_scripts.caption_validation import DUPLICATE, EMPTY, CaptionValidator, dedup_key

logger = logging.getLogger(__name__)


@dataclass
class CaptionSummary:
    images: int = 0
    label_sets: int = 0
    generated: int = 0
    cached: int = 0
    incomplete: int = 0  # label sets that ended with fewer than n valid captions
    images_without_captions: int = 0
    unreadable_cache_lines: int = 0
    rejected: Counter = field(default_factory=Counter)

    def __str__(self) -> str:
        reasons = ", ".join(f"{reason} {count}" for reason, count in self.rejected.most_common()) or "none"
        lines = [
            f"images: {self.images} ({self.images_without_captions} without a valid caption, left out)",
            f"label sets: {self.label_sets} ({self.generated} generated, {self.cached} from the cache)",
            f"incomplete label sets (fewer valid captions than requested): {self.incomplete}",
            f"rejected captions: {sum(self.rejected.values())} ({reasons})",
        ]
        if self.unreadable_cache_lines:
            lines.append(f"unreadable cache lines ignored: {self.unreadable_cache_lines}")
        return "\n".join(lines)


def caption_label_set(
    backend: CaptionBackend,
    validator: CaptionValidator,
    modality: str,
    labels: tuple[str, ...],
    n: int,
    max_rounds: int,
) -> tuple[list[str], Counter]:
    """Up to `n` distinct valid captions for `labels`, asking the backend for the missing ones at most `max_rounds`
    times; returns them with the count of rejected candidates per reason."""
    findings = findings_of(labels)
    captions: list[str] = []
    seen: set[str] = set()
    rejected: Counter = Counter()
    for _ in range(max_rounds):
        candidates = backend.generate(modality, findings, n - len(captions))
        if not candidates:
            rejected[EMPTY] += 1
        for candidate in candidates:
            if len(captions) == n:
                break
            reason = validator.rejection(candidate, labels)
            if reason is None and dedup_key(candidate) in seen:
                reason = DUPLICATE
            if reason:
                rejected[reason] += 1
                continue
            seen.add(dedup_key(candidate))
            captions.append(candidate.strip())
        if len(captions) == n:
            break
    return captions, rejected


def caption_dataset(
    images: list[LabelledImage],
    backend: CaptionBackend,
    modality: str,
    n: int,
    cache: CaptionCache,
    validator: CaptionValidator,
    max_rounds: int = 3,
    retry_incomplete: bool = False,
) -> tuple[dict[tuple[str, ...], list[str]], CaptionSummary]:
    """Captions for every distinct label set of `images`, from the cache or generated and then cached. Label sets
    given up on are cached too, so that a rerun is free; `retry_incomplete` generates them again."""
    label_sets = sorted({image.label_set for image in images})
    summary = CaptionSummary(images=len(images), label_sets=len(label_sets))
    summary.unreadable_cache_lines = cache.unreadable_lines
    captions_by_set = {}
    for labels in tqdm(label_sets, desc="captioning label sets", unit="set"):
        key = cache_key(backend.name, modality, labels, prompt_version(), n)
        record = cache.get(key)
        if record is not None and (record["complete"] or not retry_incomplete):
            summary.cached += 1
            captions = record["captions"]
        else:
            captions, rejected = caption_label_set(backend, validator, modality, labels, n, max_rounds)
            cache.put(key, captions, dict(rejected), complete=len(captions) == n)
            summary.generated += 1
            summary.rejected.update(rejected)
            if len(captions) < n:
                logger.warning(
                    "%s: gave up after %d rounds with %d of %d valid captions (rejected: %s)",
                    list(labels),
                    max_rounds,
                    len(captions),
                    n,
                    dict(rejected),
                )
        summary.incomplete += len(captions) < n
        captions_by_set[labels] = captions
    return captions_by_set, summary


def write_captions(images: list[LabelledImage], captions_by_set: dict[tuple[str, ...], list[str]], out: Path) -> int:
    """Writes one line per image that has captions; returns how many images had none and were left out."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    left_out = 0
    with partial.open("w", encoding="utf-8") as file:
        for image in images:
            captions = captions_by_set[image.label_set]
            if not captions:
                left_out += 1
                continue
            record = {"path": image.path, "labels": list(image.labels), "captions": captions}
            file.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(partial, out)
    return left_out


def make_backend(args: argparse.Namespace) -> CaptionBackend:
    sampling = SamplingParameters(args.temperature, args.top_p, args.max_new_tokens)
    if args.llm == "template":
        return TemplateBackend()
    if args.endpoint:
        return ChatCompletionsBackend(args.endpoint, args.llm, sampling, api_key_env=args.api_key_env)
    from transformers import set_seed

    set_seed(args.seed)
    return PipelineBackend(args.llm, sampling, device=args.device)


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True, help="image folder (a subfolder per class), CSV or HF dataset")
    parser.add_argument("--modality", required=True, choices=caption_modalities())
    parser.add_argument("--llm", required=True, help="local model or Hub id, endpoint model name, or 'template'")
    parser.add_argument("--out", required=True, type=Path, help="output JSONL, one line per image")
    parser.add_argument("--n", type=int, default=10, help="captions per label set")
    parser.add_argument("--endpoint", help="base URL of an OpenAI-compatible API, e.g. http://localhost:8000/v1")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    parser.add_argument("--cache", type=Path, help="cache JSONL (default: <out stem>.cache.jsonl beside --out)")
    parser.add_argument("--max-rounds", type=int, default=3, help="generation rounds per label set before giving up")
    parser.add_argument("--retry-incomplete", action="store_true", help="regenerate cached label sets given up on")
    parser.add_argument("--min-words", type=int, default=3)
    parser.add_argument("--max-words", type=int, default=60)
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--device", help="device for a local model, e.g. cuda:0 (default: transformers' choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", help="split of a Hugging Face dataset")
    parser.add_argument("--path-column", default="path", help="CSV column with the image path")
    parser.add_argument("--label-column", nargs="+", help="label column(s) (CSV default: label; HF: ClassLabels)")
    parser.add_argument("--onehot-columns", nargs="+", help="CSV columns named after findings, 1 when present")
    args = parser.parse_args(argv)
    if args.n < 1 or args.max_rounds < 1:
        parser.error("--n and --max-rounds must be at least 1")
    if args.llm == "template" and args.endpoint:
        parser.error("--endpoint needs the served model's name in --llm, not 'template'")
    return args


def main(argv: list[str] | None = None, prog: str | None = None) -> CaptionSummary:
    args = parse_args(argv, prog)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    images = load_labelled_images(args.dataset, args.split, args.path_column, args.label_column, args.onehot_columns)
    if not images:
        raise SystemExit(f"no labelled images found in {args.dataset}")
    cache = CaptionCache(args.cache or args.out.with_name(args.out.stem + ".cache.jsonl"))
    validator = CaptionValidator(
        args.modality, {label for image in images for label in image.labels}, args.min_words, args.max_words
    )
    captions_by_set, summary = caption_dataset(
        images, make_backend(args), args.modality, args.n, cache, validator, args.max_rounds, args.retry_incomplete
    )
    summary.images_without_captions = write_captions(images, captions_by_set, args.out)
    print(f"wrote {args.out}\n{summary}")
    return summary


if __name__ == "__main__":
    main()
