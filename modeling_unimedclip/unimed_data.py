"""Streaming training data for UniMed-CLIP: the UniMed WebDataset shards, mixed by modality, decoded and cropped in
the DataLoader workers, batched with dynamic padding, resumable exactly.

    dataset = load_unimed("<user>/UniMed", rank=rank, world_size=world_size)
    loader = unimed_dataloader(dataset, batch_size=128, num_workers=8, collate_fn=UniMedCollator(tokenizer))
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        for batch in loader:
            pixel_values = normalize_pixels(batch.pop("pixel_values").to(device))
            ...
    checkpoint["data"] = loader.state_dict()  # later: loader.load_state_dict(checkpoint["data"])

Shuffling and resume. Every epoch reads every sample exactly once: the modalities are interleaved at random with
`stopping_strategy="all_exhausted_without_replacement"`, then the shards are split over ranks and DataLoader
workers. The shard order is shuffled with `seed` and again on every `set_epoch`, and the caption choice and crop of
each sample are drawn from a generator seeded with (seed, epoch, shard, key). There is no shuffle buffer, so
`StatefulDataLoader.state_dict()` resumes exactly, with workers. The cost: consecutive samples of one modality come
from one shard in its stored order, so the shard builder must write each source's samples in random order (a buffer
large enough to mix shards would hold hundreds of MB per worker, and `datasets` resumes it only approximately).

Corrupt data never stops training: a truncated or unreadable tar ends its shard, and samples with a missing member, a
bad JSON record, no caption or an undecodable image are dropped. Each is counted by reason (`SKIP_REASONS`), and the
counts travel with the next good sample to the loader of `unimed_dataloader`, which sums them in
`loader.skipped_samples` and saves them in its state dict (skips after a worker's last delivered sample of an epoch
are reported with its next sample, or not at all when the workers are not persistent).
"""

import io
import json
import math
import random
import tarfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from datasets import (
    DownloadConfig,
    Features,
    IterableDataset,
    Value,
    get_dataset_config_names,
    interleave_datasets,
    load_dataset_builder,
)
from datasets.distributed import split_dataset_by_node
from datasets.packaged_modules.webdataset.webdataset import base_plus_ext
from datasets.utils.file_utils import xopen
from PIL import Image
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .processing_unimedclip import CONTEXT_LENGTH, clean_text
from .unimed_sources import (
    FIRST,
    IMAGE_FIELD,
    MODALITIES,
    RANDOM_OF_FIRST_10,
    RECORD_FIELD,
    REPORT_ELSE_RANDOM_OF_FIRST_10,
    get_source,
)

SKIP_REASONS = ("truncated_shard", "missing_member", "bad_record", "no_caption", "bad_image")
SKIPPED_KEY = "__skipped__"  # per sample: {reason: count} of the samples dropped just before it by this worker

# The original training crop (open_clip's `RandomResizedCrop(scale=(0.9, 1.0))`, torchvision's default ratios).
CROP_SCALE = (0.9, 1.0)
CROP_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))

_RAW_FEATURES = Features(
    {
        "__key__": Value("string"),
        "__url__": Value("string"),
        IMAGE_FIELD: Value("binary"),
        RECORD_FIELD: Value("binary"),
        "error": Value("string"),
    }
)


def _read_samples(shard_urls: list[str], token: str | bool | None) -> Iterator[dict[str, Any]]:
    """Yield the raw samples of WebDataset shards, plus one `truncated_shard` marker for each shard that breaks off."""
    download_config = DownloadConfig(token=token)
    for url in shard_urls:
        sample: dict[str, Any] = {}
        try:
            with xopen(url, "rb", block_size=0, download_config=download_config) as file:
                with tarfile.open(fileobj=file, mode="r|") as tar:
                    for member in tar:
                        # The key is the member path up to the first dot of its file name, as `load_dataset` reads it.
                        key, field = base_plus_ext(member.name)
                        if not member.isfile() or key is None:
                            continue
                        if sample and sample["__key__"] != key:
                            yield sample
                            sample = {}
                        if not sample:
                            sample = {
                                "__key__": key,
                                "__url__": url,
                                IMAGE_FIELD: None,
                                RECORD_FIELD: None,
                                "error": None,
                            }
                        if field in (IMAGE_FIELD, RECORD_FIELD):
                            sample[field] = tar.extractfile(member).read()
        except (tarfile.TarError, EOFError):
            yield {"__key__": "", "__url__": url, IMAGE_FIELD: None, RECORD_FIELD: None, "error": "truncated_shard"}
            continue
        if sample:
            yield sample


def _parse_record(data: bytes) -> dict[str, Any]:
    record = json.loads(data)  # raises ValueError, also for bytes that are not UTF-8
    if not isinstance(record, dict):
        raise ValueError(f"A sample record must be a JSON object, not {type(record).__name__}.")
    for field, kind in (("source", str), ("modality", str), ("captions", list), ("report", (str, type(None)))):
        if not isinstance(record.get(field), kind):
            raise ValueError(f"Sample record field {field!r} is missing or has the wrong type.")
    if not all(isinstance(caption, str) for caption in record["captions"]):
        raise ValueError("Sample record captions must be strings.")
    return record


def _sample_rng(seed: int, epoch: int, url: str, key: str) -> random.Random:
    # Seeding with a string is stable across processes and Python versions (it hashes with SHA-512). The shard name
    # is part of the seed because keys may repeat across shards.
    return random.Random(f"{seed}:{epoch}:{url.rsplit('/', 1)[-1]}:{key}")


def choose_caption(record: Mapping[str, Any], rng: random.Random) -> str:
    """
    The training caption of a sample by its source's caption rule, as the original training code chose it:
    uniform among the first 10 captions (LLM-generated), the report when present (MIMIC-CXR), or the source's own
    caption (the first). Returns "" when the record has no usable caption.
    """
    rule = get_source(record["source"]).caption_rule
    captions = record["captions"]
    if rule == FIRST:
        return captions[0].strip() if captions else ""
    if rule == REPORT_ELSE_RANDOM_OF_FIRST_10 and (record.get("report") or "").strip():
        return record["report"].strip()
    if rule in (RANDOM_OF_FIRST_10, REPORT_ELSE_RANDOM_OF_FIRST_10):
        candidates = [caption.strip() for caption in captions[:10] if caption.strip()]
        return rng.choice(candidates) if candidates else ""
    raise ValueError(f"Unknown caption rule {rule!r} for source {record['source']!r}.")


def random_resized_crop_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision's `RandomResizedCrop.get_params` with scale (0.9, 1.0), drawn from `rng`: (left, top, w, h)."""
    area = width * height
    for _ in range(10):
        target_area = area * rng.uniform(*CROP_SCALE)
        aspect_ratio = math.exp(rng.uniform(*CROP_LOG_RATIO))
        crop_width = round(math.sqrt(target_area * aspect_ratio))
        crop_height = round(math.sqrt(target_area / aspect_ratio))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            return rng.randint(0, width - crop_width), rng.randint(0, height - crop_height), crop_width, crop_height
    # Fallback: a centre crop at the closest allowed aspect ratio.
    min_ratio, max_ratio = (math.exp(bound) for bound in CROP_LOG_RATIO)
    crop_width, crop_height = width, height
    if width / height < min_ratio:
        crop_height = round(width / min_ratio)
    elif width / height > max_ratio:
        crop_width = round(height * max_ratio)
    return (width - crop_width) // 2, (height - crop_height) // 2, crop_width, crop_height


def train_transform(image: Image.Image, image_size: int, rng: random.Random) -> torch.Tensor:
    """The original training transform: RandomResizedCrop(scale 0.9-1, bicubic), RGB, as a uint8 (3, S, S) tensor."""
    if image.mode not in ("L", "RGB"):
        # The original decoded to RGB before cropping. For L and RGB converting after the resize gives the same
        # pixels (and resizes one channel instead of three for grayscale scans); for palette, 16-bit or alpha
        # images it does not.
        image = image.convert("RGB")
    left, top, width, height = random_resized_crop_box(image.width, image.height, rng)
    # Crop, then resize: `resize(box=...)` would also read pixels outside the box near its edges.
    image = image.crop((left, top, left + width, top + height))
    image = image.resize((image_size, image_size), Image.Resampling.BICUBIC).convert("RGB")
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


class _SampleTransform:
    """The per-sample work of the DataLoader workers: parse, pick the caption, decode, crop, count what is skipped."""

    def __init__(self, seed: int, image_size: int):
        self.seed = seed
        self.image_size = image_size
        self.epoch_source: IterableDataset  # set by `load_unimed` once the dataset exists
        self.pending_skips: Counter[str] = Counter()

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        reason, sample = self._transform(raw)
        if reason is not None:
            self.pending_skips[reason] += 1
            return {"pixel_values": None}
        sample[SKIPPED_KEY] = dict(self.pending_skips)
        self.pending_skips.clear()
        return sample

    def _transform(self, raw: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        if raw["error"] is not None:
            return raw["error"], {}
        if raw[IMAGE_FIELD] is None or raw[RECORD_FIELD] is None:
            return "missing_member", {}
        rng = _sample_rng(self.seed, self.epoch_source.epoch, raw["__url__"], raw["__key__"])
        try:
            record = _parse_record(raw[RECORD_FIELD])
            caption = choose_caption(record, rng)
        except ValueError:
            return "bad_record", {}
        if not caption:
            return "no_caption", {}
        try:
            with Image.open(io.BytesIO(raw[IMAGE_FIELD])) as image:
                pixel_values = train_transform(image, self.image_size, rng)
        except Exception:  # PIL raises many exception types on malformed or hostile image bytes
            return "bad_image", {}
        return None, {
            "pixel_values": pixel_values,
            "caption": caption,
            "source": record["source"],
            "modality": record["modality"],
            "__key__": raw["__key__"],
        }


def _is_usable(sample: dict[str, Any]) -> bool:
    return sample["pixel_values"] is not None


def _modality_stream(
    repo_or_dir: str, modality: str, split: str, seed: int, revision: str | None, token: str | bool | None
) -> tuple[IterableDataset, int | None]:
    """The raw samples of one modality config, its shards in a seeded order, and its sample count from the card."""
    builder = load_dataset_builder(repo_or_dir, modality, revision=revision, token=token)
    data_files = builder.config.data_files or {}
    if split not in data_files:
        raise ValueError(f"Config {modality!r} of {repo_or_dir} has no split {split!r}; it has {sorted(data_files)}.")
    shard_urls = list(data_files[split])
    random.Random(seed).shuffle(shard_urls)
    stream = IterableDataset.from_generator(
        _read_samples, features=_RAW_FEATURES, gen_kwargs={"shard_urls": shard_urls, "token": token}
    )
    splits = builder.info.splits or {}
    return stream, splits[split].num_examples if split in splits else None


def _mixing_probabilities(
    modalities: Sequence[str], weights: Mapping[str, float] | None, sizes: Mapping[str, int | None]
) -> list[float]:
    if weights is None:
        missing = [modality for modality in modalities if not sizes[modality]]
        if missing:
            raise ValueError(
                f"The dataset card declares no sample count (dataset_info splits num_examples) for {missing}, so the "
                "modalities cannot be mixed by size: pass `weights` explicitly."
            )
        weights = {modality: float(sizes[modality]) for modality in modalities}
    if set(weights) != set(modalities):
        raise ValueError(f"`weights` must have one entry per loaded modality {list(modalities)}; got {dict(weights)}.")
    if any(not weight > 0 for weight in weights.values()):
        raise ValueError(f"`weights` must be positive; got {dict(weights)}.")
    total = sum(weights.values())
    return [weights[modality] / total for modality in modalities]


def load_unimed(
    repo_or_dir: str,
    modalities: Sequence[str] | None = None,
    weights: Mapping[str, float] | None = None,
    split: str = "train",
    seed: int = 0,
    image_size: int = 224,
    rank: int = 0,
    world_size: int = 1,
    revision: str | None = None,
    token: str | bool | None = None,
) -> IterableDataset:
    """
    Stream UniMed (a Hub dataset repository or a local directory laid out the same) for training.

    Yields `{"pixel_values": uint8 (3, image_size, image_size), "caption": str, "source": str, "modality": str,
    "__key__": str, "__skipped__": {reason: count}}`; see the module docstring for the shuffling, resume and
    corrupt-sample design. Call `set_epoch(epoch)` on the returned dataset (not on a dataset derived from it) before
    each epoch.

    Args:
        repo_or_dir: dataset repository id or local directory with the UniMed card (one config per modality).
        modalities: configs to mix; default every modality config of the card.
        weights: mixing weight per modality; default proportional to the modality's sample count in the card, as the
            original consumed its sources. Every sample is still read exactly once per epoch, so other weights
            change the order in which the modalities run out, not what an epoch contains.
        split, revision, token: as in `datasets.load_dataset`.
        seed: seeds the shard order, the mixing and each sample's caption choice and crop.
        image_size: side of the square training crop.
        rank, world_size: this process among the data-parallel processes; each reads its own shards.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"Need 0 <= rank < world_size; got rank={rank}, world_size={world_size}.")
    if image_size <= 0:
        raise ValueError(f"`image_size` must be positive; got {image_size}.")
    configs = set(get_dataset_config_names(repo_or_dir, revision=revision, token=token))
    available = [modality for modality in MODALITIES if modality in configs]
    modalities = available if modalities is None else list(modalities)
    unknown = [modality for modality in modalities if modality not in available]
    if unknown or not modalities:
        raise ValueError(f"Cannot load modalities {unknown or modalities} from {repo_or_dir}: it has {available}.")

    streams, sizes = [], {}
    for modality in modalities:
        stream, sizes[modality] = _modality_stream(repo_or_dir, modality, split, seed, revision, token)
        if stream.num_shards < world_size:
            raise ValueError(
                f"Modality {modality!r} has {stream.num_shards} shards, fewer than world_size={world_size}: every "
                "rank needs at least one shard of every modality. Rebuild with smaller shards or load fewer ranks."
            )
        if stream.num_shards % world_size:
            warnings.warn(
                f"Modality {modality!r} has {stream.num_shards} shards, not a multiple of world_size={world_size}: "
                "ranks will read different numbers of samples per epoch.",
                stacklevel=2,
            )
        streams.append(stream)
    mixed = interleave_datasets(
        streams,
        probabilities=_mixing_probabilities(modalities, weights, sizes),
        seed=seed,
        stopping_strategy="all_exhausted_without_replacement",
    )
    # Interleave first, then split: the reverse makes the ranks read duplicated examples.
    node = split_dataset_by_node(mixed, rank=rank, world_size=world_size, strategy="shards")
    transform = _SampleTransform(seed=seed, image_size=image_size)
    dataset = node.map(transform, remove_columns=list(_RAW_FEATURES)).filter(_is_usable)
    # `set_epoch` updates only the dataset it is called on (in memory shared with persistent workers), so the
    # per-sample randomness reads its epoch from the returned dataset.
    transform.epoch_source = dataset
    return dataset


class UniMedCollator:
    """
    Batch samples of `load_unimed`: stack the uint8 images and tokenize the cleaned captions, truncated to
    `max_length` tokens and padded to the longest caption of the batch (the model reads the masked [CLS] state, so
    this gives the embeddings of the original's fixed padding to 256).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int = CONTEXT_LENGTH):
        if max_length <= 0:
            raise ValueError(f"`max_length` must be positive; got {max_length}.")
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not samples:
            raise ValueError("Cannot collate an empty list of samples.")
        text = self.tokenizer(
            [clean_text(sample["caption"]) for sample in samples],
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {
            "pixel_values": torch.stack([sample["pixel_values"] for sample in samples]),
            "input_ids": text["input_ids"].long(),
            "attention_mask": text["attention_mask"].long(),
        }


class _CountingCollate:
    """Wraps a collate function: moves the per-sample skip counts out of the samples into one batch entry."""

    def __init__(self, collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]]):
        self.collate_fn = collate_fn

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        skipped: Counter[str] = Counter()
        for sample in samples:
            skipped.update(sample.pop(SKIPPED_KEY, {}))
        batch = self.collate_fn(samples)
        batch[SKIPPED_KEY] = dict(skipped)
        return batch


class UniMedDataLoader(StatefulDataLoader):
    """
    A `StatefulDataLoader` that removes the skip counts from each batch and sums them in `skipped_samples`
    ({reason: count} since the loader was created, restored by `load_state_dict`).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.skipped_samples: Counter[str] = Counter()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in super().__iter__():
            self.skipped_samples.update(batch.pop(SKIPPED_KEY))
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "skipped_samples": dict(self.skipped_samples)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.skipped_samples = Counter(state_dict.pop("skipped_samples", {}))
        super().load_state_dict(state_dict)


def unimed_dataloader(
    dataset: IterableDataset,
    batch_size: int,
    num_workers: int,
    collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]],
    **kwargs: Any,
) -> UniMedDataLoader:
    """
    A resumable loader over `load_unimed`'s dataset: full batches only (`drop_last=True`), the shards of this rank
    split over `num_workers` workers. Extra keyword arguments go to `StatefulDataLoader`.
    """
    if num_workers > 0 and dataset.num_shards % num_workers:
        warnings.warn(
            f"This rank has {dataset.num_shards} shards of its smallest modality, not a multiple of "
            f"num_workers={num_workers}: some workers will idle or read more than others.",
            stacklevel=2,
        )
    return UniMedDataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_CountingCollate(collate_fn),
        drop_last=True,
        **kwargs,
    )


def normalize_pixels(
    pixel_values: torch.Tensor,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 images (..., 3, H, W) to normalised `dtype` pixels, on their device (the training GPU)."""
    if pixel_values.dtype != torch.uint8 or pixel_values.ndim < 3 or pixel_values.shape[-3] != 3:
        raise ValueError(
            f"Expected uint8 pixel values shaped (..., 3, H, W); got {pixel_values.dtype} {tuple(pixel_values.shape)}."
        )
    mean = torch.tensor(mean, dtype=dtype, device=pixel_values.device).view(3, 1, 1)
    std = torch.tensor(std, dtype=dtype, device=pixel_values.device).view(3, 1, 1)
    return (pixel_values.to(dtype) / 255 - mean) / std
