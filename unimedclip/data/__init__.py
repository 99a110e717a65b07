"""UniMed, the training data: the source registry, the shard record format, and the resumable training stream.

Data flows one way: raw sources -> shards (`dataset_scripts/`, writing `records` and `manifest`) -> `load_unimed`
(`tar_reader`, then per sample `records` and `transforms`, mixed and split in `stream`) -> batches (`collate`,
`loader`) -> the model. On hosts with few CPU cores per GPU, `device_decode` leaves JPEGs undecoded for the GPU.

    dataset = load_unimed("<user>/UniMed", rank=rank, world_size=world_size)
    loader = unimed_dataloader(dataset, batch_size=128, num_workers=8, collate_fn=UniMedCollator(tokenizer))
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        for batch in loader:
            pixel_values = normalize_pixels(batch.pop("pixel_values").to(device))
            ...
    checkpoint["data"] = loader.state_dict()  # later: loader.load_state_dict(checkpoint["data"])

"""

from .collate import UniMedCollator
from .loader import PARTIAL_BATCH, EmptyEpochError, UniMedDataLoader, unimed_dataloader
from .stream import SKIP_REASONS, UniMedStream, load_unimed
from .transforms import normalize_pixels

__all__ = [
    "PARTIAL_BATCH",
    "SKIP_REASONS",
    "EmptyEpochError",
    "UniMedCollator",
    "UniMedDataLoader",
    "UniMedStream",
    "load_unimed",
    "normalize_pixels",
    "unimed_dataloader",
]
