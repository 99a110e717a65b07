"""Labelled images for fine-tuning: training data from an image folder, a CSV or a Hugging Face dataset (read by the
evaluation's readers), validation and test data of the same kind, one class list for all of them, and every image
checked once so that unreadable ones are set aside and counted before anything trains on them.

Without validation data, a share of the readable training images is held out, stratified by class and seeded
(scikit-learn's `train_test_split`), so every class is validated and the split is the same on every run and process.
"""

from collections import Counter
from dataclasses import dataclass, field

import torch
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from ..evaluation.readers import (
    EvalDataset,
    ImageDataset,
    Sample,
    collate,
    csv_dataset,
    hf_dataset,
    image_folder_dataset,
)
from .config import FinetuneConfig

SPLITS = ("train", "validation", "test")


class DataError(ValueError):
    """Labelled data that fine-tuning cannot use; the message names the problem."""


@dataclass
class Split:
    samples: list[Sample]
    source: str  # where the images come from, for results.json and the model card
    unreadable: list[str] = field(default_factory=list)  # images that could not be read, set aside

    def counts(self, classes: list[str]) -> dict[str, int]:
        per_label = Counter(sample.label for sample in self.samples)
        return {name: per_label[index] for index, name in enumerate(classes)}


@dataclass
class LabelledData:
    classes: list[str]
    splits: dict[str, Split]  # train, validation and, when given, test

    @property
    def labels(self) -> list[int]:
        return [sample.label for sample in self.splits["train"].samples]

    def describe(self) -> dict:
        """Per split: its source, image count per class, and the unreadable images set aside."""
        return {
            name: {
                "source": split.source,
                "images": len(split.samples),
                "per_class": split.counts(self.classes),
                "unreadable": len(split.unreadable),
                "unreadable_examples": split.unreadable[:5],
            }
            for name, split in self.splits.items()
        }


def dataset_split(config: FinetuneConfig, name: str) -> str:
    """The `--hf-dataset` split that serves as `name` (train, validation or test)."""
    return {"train": config.split, "validation": config.validation, "test": config.test}[name]


def read_source(config: FinetuneConfig, location: str, name: str) -> EvalDataset:
    """Split `name`, of the kind the training data is: `location` is a folder or a CSV file (for a Hugging Face
    dataset, the split comes from the config)."""
    if config.image_folder is not None:
        return image_folder_dataset(location)
    if config.csv is not None:
        return csv_dataset(location, config.path_column, config.label_column)
    split = dataset_split(config, name)
    return hf_dataset(config.hf_dataset, split, config.image_column, config.label_column, config.streaming)


def class_list(config: FinetuneConfig, train: EvalDataset) -> list[str]:
    classes = list(config.classes) if config.classes is not None else list(train.classes)
    if len(classes) < 2:
        raise DataError(
            f"A classifier needs at least two classes; {config.source} has only {classes}. Add images of the other "
            "class(es), or list every class with --classes."
        )
    return classes


def relabelled(dataset: EvalDataset, classes: list[str], source: str) -> list[Sample]:
    """`dataset`'s samples with labels indexing `classes`; a label outside the list is an error naming it."""
    index = {name: position for position, name in enumerate(classes)}
    unknown = Counter(dataset.classes[s.label] for s in dataset.samples if dataset.classes[s.label] not in index)
    if unknown:
        found = ", ".join(f"{label!r} ({count} images)" for label, count in sorted(unknown.items()))
        raise DataError(
            f"{source}: label(s) {found} are not in the class list {classes}. Add them to --classes, or remove "
            "those images."
        )
    return [Sample(sample.image, index[dataset.classes[sample.label]]) for sample in dataset.samples]


def readable(samples: list[Sample], image_processor, num_workers: int, source: str, description: str) -> Split:
    """Run every image through the image processor once (in DataLoader workers); keep those it reads."""
    loader = torch.utils.data.DataLoader(
        ImageDataset(samples, image_processor, decode=False),
        batch_size=32,
        num_workers=num_workers,
        collate_fn=collate,
    )
    failed = []
    with tqdm(total=len(samples), desc=f"checking {description} images", unit="img", leave=False) as progress:
        for _, labels, batch_failed in loader:
            failed += batch_failed
            progress.update(len(labels) + len(batch_failed))
    bad = set(failed)
    kept = [sample for index, sample in enumerate(samples) if index not in bad]
    if not kept:
        raise DataError(f"None of the {len(samples)} {description} images ({source}) could be read.")
    return Split(kept, source, [str(samples[index].image) for index in sorted(bad)])


def stratified_split(train: Split, classes: list[str], fraction: float, seed: int) -> tuple[Split, Split]:
    """Hold out `fraction` of each class of `train` (seeded); every class must keep images on both sides."""
    labels = [sample.label for sample in train.samples]
    per_class = {classes[label]: count for label, count in sorted(Counter(labels).items())}
    advice = "Give validation data with --validation, or a larger --validation-fraction."
    try:
        kept, held_out = train_test_split(
            list(range(len(labels))), test_size=fraction, stratify=labels, random_state=seed
        )
    except ValueError as error:  # fewer than two images in a class, or fewer held-out images than classes
        raise DataError(
            f"Cannot hold out a stratified {fraction:.0%} of the training images {per_class} for validation: "
            f"{error} {advice}"
        ) from None
    for side, indices in (("validation", held_out), ("training", kept)):
        present = {classes[labels[index]] for index in indices}
        empty = [name for name in per_class if name not in present]
        if empty:
            raise DataError(
                f"Holding out {fraction:.0%} of the training images for validation leaves no {side} image of "
                f"class(es) {empty} (training images per class: {per_class}). {advice}"
            )
    source = f"{fraction:.0%} of {train.source}, stratified by class, seed {seed}"
    return (
        Split([train.samples[i] for i in sorted(kept)], train.source, train.unreadable),
        Split([train.samples[i] for i in sorted(held_out)], source),
    )


def load_labelled_data(config: FinetuneConfig, image_processor) -> LabelledData:
    """The training, validation and (optional) test splits, checked, with the unreadable images set aside."""
    try:
        train = read_source(config, config.source, "train")
    except (FileNotFoundError, ValueError) as error:
        raise DataError(f"Cannot read the training data {config.source}: {error}") from None
    classes = class_list(config, train)
    datasets = {"train": (config.source, train)}
    for name, location in (("validation", config.validation), ("test", config.test)):
        if location is not None:
            try:
                datasets[name] = (location, read_source(config, location, name))
            except (FileNotFoundError, ValueError) as error:
                raise DataError(f"Cannot read the {name} data {location}: {error}") from None

    splits = {}
    for name, (location, dataset) in datasets.items():
        source = location if config.hf_dataset is None else f"{config.hf_dataset}:{dataset_split(config, name)}"
        samples = relabelled(dataset, classes, source)
        splits[name] = readable(samples, image_processor, config.num_workers, source, name)
    if "validation" not in splits:
        splits["train"], splits["validation"] = stratified_split(
            splits["train"], classes, config.validation_fraction, config.seed
        )
    missing = [name for name, count in splits["train"].counts(classes).items() if count == 0]
    if missing:
        raise DataError(
            f"Class(es) {missing} have no readable training image in {config.source}; every class in the class "
            f"list {classes} needs some."
        )
    return LabelledData(classes, {name: splits[name] for name in SPLITS if name in splits})
