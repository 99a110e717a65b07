"""The UniMed training stream: the WebDataset shards of every modality config, mixed, split over processes and
DataLoader workers, each sample decoded, captioned and cropped in the workers.

Shuffling and resume. Every epoch reads every sample exactly once: the modalities are interleaved at random with
`stopping_strategy="all_exhausted_without_replacement"`, then the shards are split over ranks and DataLoader
workers. The shard order is shuffled with `seed` and again on every `set_epoch`, and the caption choice and crop of
each sample are drawn from a generator seeded with (seed, epoch, shard, key). There is no shuffle buffer, so
`StatefulDataLoader.state_dict()` resumes exactly, with workers. The cost: consecutive samples of one modality come
from one shard in its stored order, so the shard builder must write each source's samples in random order (a buffer
large enough to mix shards would hold hundreds of MB per worker, and `datasets` resumes it only approximately).

Corrupt data never stops training: a truncated or unreadable tar ends its shard, and samples with a missing member, a
record that cannot be parsed, no caption or an image that cannot be decoded are dropped, whatever the exception. Each
is counted by reason (`SKIP_REASONS`): iterating the stream sums them in `stream.skipped_samples`; the loader of
`unimed_dataloader` gets them with the batches, and at the end of an epoch with the samples too few for a last batch.
"""

import io
import random
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from datasets import IterableDataset, get_dataset_config_names, interleave_datasets, load_dataset_builder
from datasets.distributed import split_dataset_by_node
from PIL import Image

from ..modalities import DATA_MODALITIES
from .records import IMAGE_FIELD, RECORD_FIELD, choose_caption, parse_record
from .tar_reader import RAW_FEATURES, TRUNCATED_SHARD, read_samples
from .transforms import train_transform

SKIP_REASONS = (TRUNCATED_SHARD, "missing_member", "bad_record", "no_caption", "bad_image")


def _sample_rng(seed: int, epoch: int, url: str, key: str) -> random.Random:
    # Seeding with a string is stable across processes and Python versions (it hashes with SHA-512). The shard name
    # is part of the seed because keys may repeat across shards.
    return random.Random(f"{seed}:{epoch}:{url.rsplit('/', 1)[-1]}:{key}")


# (image bytes, image size, the sample's generator) -> the sample's image fields, or None for an unreadable image.
ImageStep = Callable[[bytes, int, random.Random], dict[str, Any] | None]


def decode_and_crop(image_bytes: bytes, image_size: int, rng: random.Random) -> dict[str, Any] | None:
    """The image step of `process_sample` on the CPU: {"pixel_values": uint8 (3, S, S)}, or None when PIL cannot
    read the bytes."""
    try:
        with Image.open(io.BytesIO(image_bytes)) as image:
            return {"pixel_values": train_transform(image, image_size, rng)}
    except Exception:  # PIL raises many exception types on malformed or hostile image bytes
        return None


def process_sample(
    raw: dict[str, Any], seed: int, epoch: int, image_size: int, image_step: ImageStep = decode_and_crop
) -> tuple[str | None, dict]:
    """(None, sample) for a usable raw sample, else (the reason it is skipped, {}). `image_step(bytes, image_size,
    rng)` gives the sample's image fields from the per-sample generator after the caption's draws, or None for an
    unreadable image."""
    if raw["error"] is not None:
        return raw["error"], {}
    if raw[IMAGE_FIELD] is None or raw[RECORD_FIELD] is None:
        return "missing_member", {}
    rng = _sample_rng(seed, epoch, raw["__url__"], raw["__key__"])
    try:
        record = parse_record(raw[RECORD_FIELD])
        caption = choose_caption(record, rng)
    except Exception:  # hostile or damaged records fail in many ways; one sample never stops training
        return "bad_record", {}
    if not caption:
        return "no_caption", {}
    image = image_step(raw[IMAGE_FIELD], image_size, rng)
    if image is None:
        return "bad_image", {}
    return None, {
        **image,
        "caption": caption,
        "source": record["source"],
        "modality": record["modality"],
        "__key__": raw["__key__"],
    }


class UniMedStream(torch.utils.data.IterableDataset):
    """The training samples of `load_unimed`: raw shard samples decoded, captioned and cropped, the unusable ones
    skipped and counted in `skipped_samples`. Resumable: its state is the raw stream's position."""

    def __init__(self, raw: IterableDataset, seed: int, image_size: int, image_step: ImageStep = decode_and_crop):
        self.raw, self.seed, self.image_size, self.image_step = raw, seed, image_size, image_step
        self.skipped_samples: Counter[str] = Counter()

    @property
    def num_shards(self) -> int:
        return self.raw.num_shards

    @property
    def epoch(self) -> int:
        # The raw dataset keeps its epoch in memory shared with persistent DataLoader workers.
        return self.raw.epoch

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the shard order and redraw captions and crops; call before each epoch."""
        self.raw.set_epoch(epoch)

    def processed(self) -> Iterator[tuple[str | None, dict]]:
        """(skip reason, {}) or (None, sample) for every raw sample of this process (or DataLoader worker)."""
        for raw in self.raw:
            yield process_sample(raw, self.seed, self.epoch, self.image_size, self.image_step)

    def __iter__(self) -> Iterator[dict]:
        for reason, sample in self.processed():
            if reason is None:
                yield sample
            else:
                self.skipped_samples[reason] += 1

    def state_dict(self) -> dict:
        return self.raw.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.raw.load_state_dict(state_dict)


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
        read_samples, features=RAW_FEATURES, gen_kwargs={"shard_urls": shard_urls, "token": token}
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
) -> UniMedStream:
    """
    Stream UniMed (a Hub dataset repository or a local directory laid out the same) for training.

    Yields `{"pixel_values": uint8 (3, image_size, image_size), "caption": str, "source": str, "modality": str,
    "__key__": str}`; see the module docstring for the shuffling, resume and corrupt-sample design. Call
    `set_epoch(epoch)` on the returned stream before each epoch.

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
    available = [modality for modality in DATA_MODALITIES if modality in configs]
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
    return UniMedStream(node, seed=seed, image_size=image_size)
