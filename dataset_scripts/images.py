"""Where the shard writer reads a sample's image bytes from: a source's raw folder, or a Hugging Face dataset.

An image reference comes from an annotation file, which the builder does not trust: a file reference must stay
inside the folder the user named, so `../` and absolute paths are refused and counted like missing images.
"""

from pathlib import Path, PurePosixPath
from typing import Protocol

from dataset_scripts.caption_inputs import dataset_kind, open_hf_dataset

MISSING_IMAGE, OUTSIDE_ROOT = "missing image", "path outside the source folder"


class SkippedSample(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SourceImages(Protocol):
    def read(self, reference: str) -> bytes:
        """The image bytes of `reference`; raises SkippedSample when there are none to read."""


class FolderImages:
    """Images stored as files under `root`, referenced by their path relative to it."""

    def __init__(self, root: Path):
        if not root.is_dir():
            raise NotADirectoryError(f"Image folder not found: {root}.")
        self.root = root

    def read(self, reference: str) -> bytes:
        relative = PurePosixPath(reference.replace("\\", "/"))
        if relative.is_absolute() or ".." in relative.parts:
            raise SkippedSample(OUTSIDE_ROOT)
        try:
            return (self.root / relative).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise SkippedSample(MISSING_IMAGE) from None


class DatasetImages:
    """Images in the image column of a Hugging Face dataset, referenced as `<split>/<row index>` (as
    `dataset_scripts/caption.py` writes them). The dataset opens lazily, once per process."""

    def __init__(self, name: str, split: str):
        self.name, self.split = name, split
        self._column = None

    def read(self, reference: str) -> bytes:
        split, _, index = reference.rpartition("/")
        if split != self.split or not index.isdigit():
            raise SkippedSample(MISSING_IMAGE)
        column = self._image_column()
        if int(index) >= len(column):
            raise SkippedSample(MISSING_IMAGE)
        image = column[int(index)]
        if image is None:
            raise SkippedSample(MISSING_IMAGE)
        if image["bytes"] is not None:
            return image["bytes"]
        try:
            return Path(image["path"]).read_bytes()
        except (OSError, TypeError):
            raise SkippedSample(MISSING_IMAGE) from None

    def _image_column(self):
        if self._column is None:
            import datasets

            dataset = open_hf_dataset(self.name, self.split)
            names = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
            if not names:
                raise ValueError(f"{self.name} has no image column.")
            self._column = dataset.cast_column(names[0], datasets.Image(decode=False))[names[0]]
        return self._column

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_column": None}  # each worker process opens the dataset itself


def images_of(dataset: str, split: str = "train") -> SourceImages:
    """The images of a labelled dataset as `dataset_scripts/caption.py` read it: an image folder, a CSV whose paths
    are relative to its folder, or a Hugging Face dataset."""
    kind = dataset_kind(dataset)
    if kind == "folder":
        return FolderImages(Path(dataset))
    if kind == "csv":
        return FolderImages(Path(dataset).parent)
    return DatasetImages(dataset, split)
