"""Reads a classification dataset as (image path, labels) pairs: an image folder, a CSV or a Hugging Face dataset."""

import csv
from dataclasses import dataclass
from pathlib import Path

from dataset_scripts.readers import literal_list
from modeling_unimedclip.image_processing_unimedclip import IMAGE_SUFFIXES

POSITIVE_VALUES = frozenset({"1", "1.0", "true", "yes"})


@dataclass(frozen=True)
class LabelledImage:
    path: str
    labels: tuple[str, ...]

    @property
    def label_set(self) -> tuple[str, ...]:
        """The labels in sorted order: captions are generated once per label set, whatever the order in the source."""
        return tuple(sorted(self.labels))


def parse_labels(value: object) -> tuple[str, ...]:
    """One cell of labels: `Edema`, `Cardiomegaly|Edema`, `['Cardiomegaly', 'Edema']`, a list, or empty."""
    if value is None or value == "":
        return ()
    if isinstance(value, (list, tuple)):
        items = value
    elif isinstance(value, str) and value.lstrip().startswith("["):
        items = literal_list(value, "label cell")
    elif isinstance(value, str):
        items = value.split("|")
    else:
        raise ValueError(f"labels must be text or a list of text, got {value!r}")
    return tuple(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))


def read_image_folder(root: Path) -> list[LabelledImage]:
    """Images under `root`, labelled by the folder that holds them (`root/<class>/x.png`, `root/CT/<class>/x.png`)."""
    images = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.parent == root:
            raise ValueError(f"{path} lies directly in {root}: an image folder needs one subfolder per class")
        images.append(LabelledImage(path.relative_to(root).as_posix(), (path.parent.name,)))
    return images


def _require_columns(source: str, available: list[str], wanted: list[str]) -> None:
    missing = [column for column in wanted if column not in available]
    if missing:
        raise ValueError(f"{source} has no column {', '.join(map(repr, missing))}; its columns are {available}")


def read_csv(
    path: Path, path_column: str, label_columns: list[str], onehot_columns: list[str] | None = None
) -> list[LabelledImage]:
    """Rows of a CSV. Labels come from `label_columns` (each a label, a `|`-separated or a Python-style list) or, with
    `onehot_columns`, from the names of those columns whose value is 1 (CheXpert style; -1, 0 and blank are not)."""
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        columns = list(reader.fieldnames or [])
        _require_columns(str(path), columns, [path_column, *(onehot_columns or label_columns)])
        images = []
        for row_number, row in enumerate(reader, 2):
            if onehot_columns:
                labels = tuple(c for c in onehot_columns if (row[c] or "").strip().lower() in POSITIVE_VALUES)
            else:
                try:
                    labels = tuple(dict.fromkeys(label for c in label_columns for label in parse_labels(row[c])))
                except ValueError as error:
                    raise ValueError(f"{path}:{row_number}: {error}") from error
            images.append(LabelledImage(row[path_column], labels))
    return images


def _is_saved_dataset(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def open_hf_dataset(name: str, split: str):
    """One split of a Hub dataset, a local dataset directory or a `save_to_disk` folder."""
    import datasets

    if _is_saved_dataset(Path(name)):
        dataset = datasets.load_from_disk(name)
    else:
        dataset = datasets.load_dataset(name, split=split)
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"{name} has no split {split!r}; its splits are {list(dataset)}")
        dataset = dataset[split]
    return dataset


def read_hf_dataset(name: str, split: str, label_columns: list[str] | None = None) -> list[LabelledImage]:
    """A Hub dataset, a local dataset directory or a `save_to_disk` folder, its images referenced as `<split>/<row>`.
    Labels come from `label_columns`, else from every ClassLabel (or list of ClassLabel) column, else from a
    `label`/`labels` column."""
    import datasets
    from tqdm import tqdm

    dataset = open_hf_dataset(name, split)
    features = dataset.features

    def is_class_label(feature: object) -> bool:
        return isinstance(feature, datasets.ClassLabel) or (
            isinstance(feature, datasets.List) and isinstance(feature.feature, datasets.ClassLabel)
        )

    if not label_columns:
        label_columns = [c for c, f in features.items() if is_class_label(f)] or [
            c for c in ("label", "labels") if c in features
        ]
        if not label_columns:
            raise ValueError(
                f"{name} has no ClassLabel or label column; pass --label-column (columns: {list(features)})"
            )
    _require_columns(name, list(features), label_columns)
    dataset = dataset.select_columns(label_columns)

    def names(column: str, value: object) -> tuple[str, ...]:
        feature = features[column]
        if isinstance(feature, datasets.ClassLabel):
            return (feature.int2str(value),)
        if is_class_label(feature):
            return tuple(feature.feature.int2str(v) for v in value)
        return parse_labels(value)

    images = []
    for index, row in enumerate(tqdm(dataset, desc=f"reading {name}", unit="row")):
        labels = tuple(dict.fromkeys(label for column in label_columns for label in names(column, row[column])))
        images.append(LabelledImage(f"{split}/{index}", labels))
    return images


def dataset_kind(dataset: str) -> str:
    """How `dataset` is read: `"csv"` (a `.csv` file), `"folder"` (a folder of class subfolders of images) or `"hf"`
    (a Hugging Face dataset: a Hub id, a local dataset directory or a `save_to_disk` folder)."""
    local = Path(dataset)
    if local.suffix.lower() == ".csv":
        return "csv"
    if local.is_dir() and not _is_saved_dataset(local):
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in local.rglob("*")):
            return "folder"
    return "hf"


def load_labelled_images(
    dataset: str,
    split: str = "train",
    path_column: str = "path",
    label_columns: list[str] | None = None,
    onehot_columns: list[str] | None = None,
) -> list[LabelledImage]:
    """Reads `dataset` as `dataset_kind` says."""
    kind = dataset_kind(dataset)
    if kind == "csv":
        if not Path(dataset).is_file():
            raise FileNotFoundError(f"no CSV file at {dataset}")
        return read_csv(Path(dataset), path_column, label_columns or ["label"], onehot_columns)
    if kind == "folder":
        return read_image_folder(Path(dataset))
    return read_hf_dataset(dataset, split, label_columns)
