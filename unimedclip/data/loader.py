"""The resumable DataLoader over the UniMed stream, which also sums the skipped samples the workers report."""

import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from datasets import IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from .stream import SKIPPED_KEY


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
