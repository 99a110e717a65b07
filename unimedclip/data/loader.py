"""The resumable DataLoader over the UniMed stream, which also sums the samples the stream skips.

Batches are formed in the DataLoader workers by `UniMedBatches` rather than by the DataLoader: only there are the
skipped samples known exactly, with the batch they were skipped for, and at the end of a worker's stream (where the
DataLoader would drop the last partial batch silently) they and the leftover samples are reported in a last, empty
item. Each item of the loader is therefore one batch, and its state is the stream position after it.
"""

import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from .stream import UniMedStream

SKIPPED_KEY = "__skipped__"  # per item: {reason: count} of the samples skipped since the previous item
PARTIAL_BATCH = "partial_batch"  # usable samples left at the end of a worker's stream, too few for a batch


class EmptyEpochError(ValueError):
    """An epoch of the stream gave not one full batch: training would wait for data forever."""


class UniMedBatches(torch.utils.data.IterableDataset):
    """Full batches of `batch_size` samples of a `UniMedStream`, as `{"samples": [...], SKIPPED_KEY: {...}}`, then
    one item with no samples that counts what the last batch could not take."""

    def __init__(self, stream: UniMedStream, batch_size: int):
        if batch_size <= 0:
            raise ValueError(f"`batch_size` must be positive; got {batch_size}.")
        self.stream, self.batch_size = stream, batch_size

    def __iter__(self) -> Iterator[dict]:
        samples, skipped = [], Counter()
        for reason, sample in self.stream.processed():
            if reason is not None:
                skipped[reason] += 1
                continue
            samples.append(sample)
            if len(samples) == self.batch_size:
                yield {"samples": samples, SKIPPED_KEY: dict(skipped)}
                samples, skipped = [], Counter()
        if samples:
            skipped[PARTIAL_BATCH] += len(samples)
        yield {"samples": [], SKIPPED_KEY: dict(skipped)}

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.stream.load_state_dict(state_dict)


class _CollateBatch:
    """Applies the collate function to an item's samples in the worker; keeps its skip counts beside the batch."""

    def __init__(self, collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]]):
        self.collate_fn = collate_fn

    def __call__(self, item: dict) -> dict:
        batch = self.collate_fn(item["samples"]) if item["samples"] else {}
        return {**batch, SKIPPED_KEY: item[SKIPPED_KEY]}


class UniMedDataLoader(StatefulDataLoader):
    """
    A `StatefulDataLoader` of full batches that sums the samples the stream skipped in `skipped_samples`
    ({reason: count} since the loader was created, restored by `load_state_dict`; `PARTIAL_BATCH` counts the usable
    samples left over at the ends of epochs). An epoch with not one full batch raises `EmptyEpochError`.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.skipped_samples: Counter[str] = Counter()
        self._resuming = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        resuming, self._resuming = self._resuming, False
        batches, epoch_skipped = 0, Counter()
        for item in super().__iter__():
            skipped = item.pop(SKIPPED_KEY)
            self.skipped_samples.update(skipped)
            epoch_skipped.update(skipped)
            if item:
                batches += 1
                yield item
        if not batches and not resuming:  # a resumed epoch may legitimately have no batch left
            leftover = epoch_skipped.pop(PARTIAL_BATCH, 0)
            raise EmptyEpochError(
                f"An epoch gave no full batch of {self.dataset.batch_size} samples: {leftover} usable sample(s) on "
                f"this process; skipped: {dict(epoch_skipped) or 'none'}. Use a smaller micro batch or more data, "
                "and check the data if most samples are skipped."
            )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "skipped_samples": dict(self.skipped_samples)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.skipped_samples = Counter(state_dict.pop("skipped_samples", {}))
        super().load_state_dict(state_dict)
        self._resuming = True


def unimed_dataloader(
    stream: UniMedStream,
    batch_size: int,
    num_workers: int,
    collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]],
    **kwargs: Any,
) -> UniMedDataLoader:
    """
    A resumable loader of full batches over `load_unimed`'s stream, the shards of this rank split over `num_workers`
    workers. Extra keyword arguments go to `StatefulDataLoader`.
    """
    if num_workers > 0 and stream.num_shards % num_workers:
        warnings.warn(
            f"This rank has {stream.num_shards} shards of its smallest modality, not a multiple of "
            f"num_workers={num_workers}: some workers will idle or read more than others.",
            stacklevel=2,
        )
    return UniMedDataLoader(
        UniMedBatches(stream, batch_size),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_CollateBatch(collate_fn),
        **kwargs,
    )
