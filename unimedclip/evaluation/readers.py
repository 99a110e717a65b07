"""Evaluation data: the catalog's loaders for the paper's 21 datasets, in the original archive's folders or in the
benchmark's Hub dataset, and generic image-folder, CSV and Hugging Face dataset loaders for bring-your-own data. A
loader yields `Sample(image, label)` where `image` is a path, encoded image bytes or an image object; the evaluator
decodes lazily, in DataLoader workers, the same way for every model, counting unreadable images."""

import ast
import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from modeling_unimedclip.dicom_unimedclip import check_pixel_budget
from modeling_unimedclip.image_processing_unimedclip import to_pil_image

from ..variants import RELEASE_NAMESPACE

CATALOG_FILE = Path(__file__).parent / "catalog.json"
# The Hub dataset of the 21 test sets in the release namespace, one config per catalog key; model cards cite it.
BENCHMARK_REPO = f"{RELEASE_NAMESPACE}/UniMed-CLIP-zero-shot-benchmark"
# The file types the original protocol counts in a class folder, unless the catalog names others.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")
# The benchmark dataset's columns and split: the image bytes as the archive has them, the class index, the image's
# path in the archive.
BENCHMARK_SPLIT = "test"
IMAGE_COLUMN, LABEL_COLUMN, PATH_COLUMN = "image", "label", "path"


@dataclass(frozen=True)
class Sample:
    image: Any  # a path, encoded image bytes, or an image object from a Hugging Face dataset
    label: int
    path: str | None = None  # where the image comes from, when `image` is not its path

    @property
    def origin(self) -> str:
        return str(self.image if self.path is None else self.path)


@dataclass(frozen=True)
class EvalDataset:
    key: str
    modality: str | None
    metric: str  # "accuracy" or "auc"
    classes: list[str]
    samples: Sequence[Sample]
    hub_dataset: tuple[str, str | None] | None = None  # (Hub dataset id, config) it comes from, for model cards
    also_report: tuple[str, ...] = ()  # metrics reported beside `metric` ("auc": RSNA, as the original did)


def load_catalog(path: Path = CATALOG_FILE) -> dict[str, dict]:
    return json.loads(Path(path).read_text())


def catalog_dataset(key: str, entry: dict, data_root: Path) -> EvalDataset:
    """Samples of one catalog dataset under `data_root`; a missing file or folder raises FileNotFoundError."""
    loader = entry["loader"]
    read = {
        "csv": _csv_samples,
        "csv_one_hot": _csv_one_hot_samples,
        "csv_category_list": _csv_category_samples,
        "folders": _folder_samples,
        "filename_label": _filename_samples,
    }.get(loader["type"])
    if read is None:
        raise ValueError(f"{key}: unknown loader type {loader['type']!r} in the catalog.")
    samples = read(loader, Path(data_root))
    _check_labels(key, samples, entry["classes"])
    return EvalDataset(
        key,
        entry["modality"],
        entry["metric"],
        entry["classes"],
        samples,
        (BENCHMARK_REPO, key),
        tuple(entry.get("also_report", ())),
    )


def image_folder_dataset(root: Path, key: str | None = None) -> EvalDataset:
    """`root/<class>/<image>`; classes in sorted folder order (as torchvision's ImageFolder)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist.")
    classes = sorted(folder.name for folder in root.iterdir() if folder.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class subfolders.")
    samples = _folder_samples({"root": ".", "class_folders": classes}, root)
    return EvalDataset(key or root.name, None, "accuracy", classes, samples)


def benchmark_configs(name_or_path: str) -> set[str]:
    """The test sets a benchmark dataset (the Hub's `BENCHMARK_REPO`, another copy, or a local build) holds."""
    import datasets

    return set(datasets.get_dataset_config_names(_location(name_or_path)))


def benchmark_dataset(
    key: str, entry: dict, name_or_path: str, configs: set[str], streaming: bool = False
) -> EvalDataset:
    """One catalog dataset from a benchmark dataset holding `configs` (see `benchmark_configs`); one it does not hold
    raises FileNotFoundError. Streaming reads it without a download to disk first, keeping the encoded images (not
    decoded ones) in memory; otherwise the downloaded copy is read row by row as the evaluation goes."""
    import datasets

    if key not in configs:
        raise FileNotFoundError(
            f"{name_or_path} does not hold {key} (its licence may not allow hosting it): build it from your own copy "
            "of the evaluation archive with `unimedclip benchmark --data-root DIR --output DIR`, or use --data-root."
        )
    dataset = datasets.load_dataset(_location(name_or_path), key, split=BENCHMARK_SPLIT, streaming=streaming)
    columns = list(dataset.features or [])  # a stream whose card declares no features knows none
    _require_columns(f"{name_or_path} ({key})", [IMAGE_COLUMN, LABEL_COLUMN, PATH_COLUMN], columns)
    names = getattr(dataset.features[LABEL_COLUMN], "names", None)
    if names != entry["classes"]:
        raise ValueError(
            f"{name_or_path} ({key}): its classes {names} are not the catalog's {entry['classes']}; rebuild it with "
            "this version's `unimedclip benchmark`."
        )
    dataset = dataset.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))
    if streaming:
        samples = [_benchmark_sample(row) for row in tqdm(dataset, desc=f"{key}: streaming", unit=" images")]
    else:
        samples = BenchmarkRows(dataset)
    if not len(samples):
        raise ValueError(f"{name_or_path} ({key}): no images found.")
    hub_dataset = BENCHMARK_REPO if Path(name_or_path).exists() else name_or_path
    return EvalDataset(
        key,
        entry["modality"],
        entry["metric"],
        entry["classes"],
        samples,
        (hub_dataset, key),
        tuple(entry.get("also_report", ())),
    )


def _location(name_or_path: str) -> str:
    """A local folder as an absolute path (`datasets` cannot name a dataset after `.`), else the Hub id."""
    return str(Path(name_or_path).resolve()) if Path(name_or_path).exists() else name_or_path


class BenchmarkRows(Sequence):
    """The samples of a downloaded benchmark test set, read from its memory-mapped table only when asked for."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        return _benchmark_sample(self.dataset[index])


def _benchmark_sample(row: dict) -> Sample:
    return Sample(row[IMAGE_COLUMN]["bytes"], row[LABEL_COLUMN], row[PATH_COLUMN])


def csv_dataset(file: Path, path_column: str = "path", label_column: str = "label", key: str | None = None):
    """A CSV with a header, one image per row; paths relative to the CSV's folder; classes in sorted label order."""
    file = Path(file)
    rows = _read_csv(file, header=True, index_column=False)
    _require_columns(file, [path_column, label_column], list(rows[0]) if rows else [])
    classes = sorted({row[label_column] for row in rows})
    samples = [Sample(file.parent / row[path_column], classes.index(row[label_column])) for row in rows]
    return EvalDataset(key or file.stem, None, "accuracy", classes, samples)


def hf_dataset(
    name_or_path: str,
    split: str = "test",
    image_column: str = "image",
    label_column: str = "label",
    streaming: bool = False,
) -> EvalDataset:
    """Any Hugging Face dataset with an image and a class-label column; `streaming` reads it without downloading
    it whole first. Labels that are not a `ClassLabel` become classes in sorted order."""
    import datasets

    dataset = datasets.load_dataset(name_or_path, split=split, streaming=streaming)
    _require_columns(name_or_path, [image_column, label_column], list(dataset.features or []))
    rows = [(row[image_column], row[label_column]) for row in dataset]
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        classes, samples = feature.names, [Sample(image, label) for image, label in rows]
    else:
        classes = sorted({label for _, label in rows})
        samples = [Sample(image, classes.index(label)) for image, label in rows]
    hub_dataset = None if Path(name_or_path).exists() else (name_or_path, None)
    key = name_or_path.rstrip("/").split("/")[-1]
    return EvalDataset(key, None, "accuracy", [str(c) for c in classes], samples, hub_dataset)


def csv_pairs(file: Path, path_column: str = "path", caption_column: str = "caption") -> tuple[list[Path], list[str]]:
    """Image-caption pairs from a CSV with a header; paths relative to the CSV's folder."""
    file = Path(file)
    rows = _read_csv(file, header=True, index_column=False)
    _require_columns(file, [path_column, caption_column], list(rows[0]) if rows else [])
    return [file.parent / row[path_column] for row in rows], [row[caption_column] for row in rows]


def hf_pairs(name_or_path: str, split: str = "test", image_column: str = "image", caption_column: str = "caption"):
    """Image-caption pairs from a Hugging Face dataset."""
    import datasets

    dataset = datasets.load_dataset(name_or_path, split=split)
    _require_columns(name_or_path, [image_column, caption_column], dataset.column_names)
    return dataset[image_column], dataset[caption_column]


def decode_image(image) -> Image.Image:
    """A sample's image as the 8-bit PIL image any model's processor takes: files (DICOM included) and encoded bytes
    are decoded alike, 16-bit images scaled by their range, and inputs of over `MAX_IMAGE_PIXELS` refused, so every
    model sees the same pixels from the archive's folders and from the benchmark dataset."""
    if isinstance(image, bytes):
        try:
            image = Image.open(io.BytesIO(image))
        except (Image.UnidentifiedImageError, Image.DecompressionBombError) as error:
            raise ValueError(f"Cannot read the image bytes: {error}") from None
        check_pixel_budget(image.width * image.height, "The image")
    return to_pil_image(image)


class ImageDataset(torch.utils.data.Dataset):
    """Preprocesses one sample per item; an unreadable image yields `None` so that the batch can drop and count it.

    With `decode` (the evaluation's way) every image is decoded by `decode_image` first, the same for every model
    compared, so a DICOM file shows its own window. Without it the processor opens the files itself, so its options
    apply (fine-tuning's way: DICOM with the run's window and frame, 16-bit images scaled by their range)."""

    def __init__(self, samples: Sequence[Sample], image_processor, decode: bool = True):
        self.samples, self.image_processor, self.decode = samples, image_processor, decode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        try:
            image = decode_image(sample.image) if self.decode else sample.image
            pixel_values = self.image_processor(image, return_tensors="pt").pixel_values[0]
        except (ValueError, TypeError, OSError):
            return None, sample.label, index
        return pixel_values, sample.label, index


def collate(batch: list) -> tuple[torch.Tensor | None, torch.Tensor, list[int]]:
    """Stack the readable items; return the indices of the unreadable ones."""
    readable = [item for item in batch if item[0] is not None]
    failed = [index for pixels, _, index in batch if pixels is None]
    if not readable:
        return None, torch.empty(0, dtype=torch.long), failed
    return torch.stack([item[0] for item in readable]), torch.tensor([item[1] for item in readable]), failed


def _require_columns(source, required: list[str], available: list[str]) -> None:
    for column in required:
        if column not in available:
            raise ValueError(f"{source} has no column {column!r}; columns: {available}.")


def _read_csv(file: Path, header: bool, index_column: bool) -> list:
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist.")
    try:
        with open(file, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError as error:
        raise ValueError(f"{file} is not UTF-8 text ({error}); save it as UTF-8.") from None
    if not rows or (header and len(rows) == 1):
        raise ValueError(f"{file} has no rows{' below its header' if rows else ''}.")
    if header:
        names, rows = rows[0], rows[1:]
        if index_column:
            names, rows = names[1:], [row[1:] for row in rows]
        return [dict(zip(names, row, strict=False)) for row in rows]
    return [row[1:] if index_column else row for row in rows]


def _cell(row, column):
    """A cell by header name (rows read with a header) or by 0-based position."""
    cells = row if isinstance(row, list) else list(row.values())
    if isinstance(column, str):
        if column not in row:
            raise ValueError(f"no column {column!r}; the columns are {list(row)}")
        return row[column]
    if column >= len(cells):
        raise ValueError(f"no column {column}: a row has only {len(cells)} cells")
    return cells[column]


def _located(root: Path, relative: str | list[str]) -> Path:
    """`root / relative`; a list gives the places one dataset has in different copies of the evaluation archive
    (PCam sits under `uzair/` in the original one): the first that exists, else the first."""
    candidates = [root / path for path in ([relative] if isinstance(relative, str) else relative)]
    return next((path for path in candidates if path.exists()), candidates[0])


def _csv_rows(loader: dict, root: Path) -> list:
    file = _located(root, loader["file"])
    rows = _read_csv(file, loader.get("header", True), loader.get("index_column", False))
    try:
        for column, value in (loader.get("filter") or {}).items():
            rows = [row for row in rows if str(_cell(row, column)) == str(value)]
        for column in _columns_read(loader) if rows else []:
            _cell(rows[0], column)  # a missing column fails here, naming the file
    except ValueError as error:
        raise ValueError(f"{file}: {error}") from None
    return rows


def _columns_read(loader: dict) -> list:
    """The columns a CSV loader reads, by name or position."""
    names = [loader[key] for key in ("path_column", "label_column", "category_column") if key in loader]
    return names + list(loader.get("label_columns", []))


def _csv_samples(loader: dict, root: Path) -> list[Sample]:
    samples = []
    values, image_root = loader.get("label_values"), _located(root, loader["image_root"])
    for row in _csv_rows(loader, root):
        path, label = _cell(row, loader["path_column"]), _cell(row, loader["label_column"])
        if loader.get("path_template"):
            path = loader["path_template"].format(path=path, label=label)
        samples.append(Sample(image_root / path, _label(label, values, loader["file"])))
    return samples


def _csv_one_hot_samples(loader: dict, root: Path) -> list[Sample]:
    samples, image_root = [], _located(root, loader["image_root"])
    for row in _csv_rows(loader, root):
        scores = [float(_cell(row, column) or 0) for column in loader["label_columns"]]
        samples.append(Sample(image_root / _cell(row, loader["path_column"]), scores.index(max(scores))))
    return samples


def _csv_category_samples(loader: dict, root: Path) -> list[Sample]:
    samples, image_root = [], _located(root, loader["image_root"])
    for row in _csv_rows(loader, root):
        categories = ast.literal_eval(_cell(row, loader["category_column"]))
        label = _label(categories[0], loader["label_values"], loader["file"])
        samples.append(Sample(image_root / _cell(row, loader["path_column"]), label))
    return samples


def _folder_samples(loader: dict, root: Path) -> list[Sample]:
    extensions = tuple(loader.get("extensions", IMAGE_EXTENSIONS))
    samples = []
    for label, folder in enumerate(loader["class_folders"]):
        directory = _located(root, loader["root"]) / folder
        if not directory.is_dir():
            raise FileNotFoundError(f"Class folder {directory} does not exist.")
        files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        samples += [Sample(file, label) for file in files]
    return samples


def _filename_samples(loader: dict, root: Path) -> list[Sample]:
    directory, pattern = _located(root, loader["root"]), re.compile(loader["pattern"])
    if not directory.is_dir():
        raise FileNotFoundError(f"Folder {directory} does not exist.")
    extensions = tuple(loader.get("extensions", IMAGE_EXTENSIONS))
    samples = []
    for file in sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in extensions):
        match = pattern.search(file.name)
        if match is None:
            raise ValueError(f"{file.name} does not match the label pattern {loader['pattern']!r}.")
        samples.append(Sample(file, _label(match["label"], loader["label_values"], str(directory))))
    return samples


def _label(value, values: dict | None, source: str) -> int:
    if values is None:
        return int(value)
    if str(value) not in values:
        raise ValueError(f"{source}: label {value!r} is not one of {sorted(values)}.")
    return values[str(value)]


def _check_labels(key: str, samples: list[Sample], classes: list[str]) -> None:
    if not samples:
        raise ValueError(f"{key}: no images found.")
    bad = {sample.label for sample in samples} - set(range(len(classes)))
    if bad:
        raise ValueError(f"{key}: labels {sorted(bad)} outside the {len(classes)} classes.")
