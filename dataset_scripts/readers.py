"""Readers for the raw UniMed sources: each turns one source's annotation files into `RawSample`s, in file order.

A reader takes the annotation file, or the folder holding it under its published name, and yields image paths
relative to the source's raw root (the original scripts' `--parent_dataset_path`). Readers never open images: the
shard writer does, and skips missing, corrupt or out-of-root ones. `read_captions` reads the output of
`dataset_scripts/caption.py` for a source of one's own.
"""

import ast
import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from unimedclip.data.sources import Source, get_source

# Published annotation file names, looked up when `annotations` is a folder.
ANNOTATION_FILES = {
    "radimagenet": "radimagenet_with_captions_training_set.csv",
    "chexpert": "chexpert_with_captions_only_frontal_view.csv",
    "chestxray8": "Chest-Xray8_with_captions.csv",
    "mimic_cxr": "mimic_cxr_with_captions_and_reports_only_frontal_view.csv",
    "openi": "filter_cap.json",
    "rocov2": "train_captions.csv",
    "pmc_oa": "pmc_oa.jsonl",
    "llava_med_alignment": "llava_med_alignment_500k_filtered.json",
    "llava_med_instruct": "llava_med_instruct_fig_captions.json",
    "quilt_1m": "quilt_1M_lookup.csv",
    "retina_deepeyenet": "06_DEN.csv",
    "retina_mm_retinal": "39_MM_Retinal_dataset.csv",
}
OPENI_REFINED_CAPTIONS = "openai_refined_concepts.json"
# The FLAIR collection is every CSV of `Retina-Annotations/` except these, which UniMed reads elsewhere or left out.
RETINA_FLAIR_EXCLUDED = {
    "06_DEN.csv",
    "39_MM_Retinal_dataset.csv",
    "28_OIA-DDR_revised.csv",
    "07_LAG_revised.csv",
    "01_EYEPACS_revised.csv",
}
RADIMAGENET_MODALITY_FOLDERS = {"CT": "ct", "MR": "mri", "US": "ultrasound"}
DEEPEYENET_PREFIX = "The fundus image of "


@dataclass
class RawSample:
    source: str
    path: str  # image path relative to the reader's root, as the annotation gives it
    captions: list[str]
    report: str | None = None
    labels: list[str] = field(default_factory=list)
    modality: str = ""  # the source's modality unless the reader decides it per image

    def __post_init__(self) -> None:
        self.captions = [caption.strip() for caption in self.captions if caption and caption.strip()]
        self.modality = self.modality or get_source(self.source).modality


Reader = Callable[[Path], Iterator[RawSample]]


def annotation_file(source: str, annotations: Path) -> Path:
    path = annotations / ANNOTATION_FILES[source] if annotations.is_dir() else annotations
    if not path.is_file():
        raise FileNotFoundError(f"Annotation file for {source} not found: {path}.")
    return path


def literal_list(text: str, where: str) -> list[str]:
    """A stringified Python list, as the caption CSVs store them; empty cells are empty lists."""
    if not text or not text.strip():
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as error:
        raise ValueError(f"{where}: expected a Python list literal, got {text[:80]!r}.") from error
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a Python list literal, got {type(value).__name__}.")
    return [str(item) for item in value]


def _utf8_rows(path: Path, read: Callable[[Iterator[str]], Iterator]) -> Iterator:
    """`read(file)` over a UTF-8 text file, naming the file when it is not UTF-8 (annotation files saved by
    spreadsheet programs often are not)."""
    with path.open(newline="", encoding="utf-8") as file:
        try:
            yield from read(file)
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} is not UTF-8 text ({error}); save it as UTF-8.") from None


def csv_rows(path: Path, required_columns: tuple[str, ...] = ()) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) pairs of a CSV with a header, after checking the header has `required_columns`."""

    def read(file: Iterator[str]) -> Iterator[tuple[int, dict[str, str]]]:
        reader = csv.DictReader(file)
        missing = [column for column in required_columns if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}.")
        for row in reader:
            yield reader.line_num, row

    return _utf8_rows(path, read)


def positional_rows(path: Path, min_columns: int) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of a CSV whose columns are read by position, as the original builders did."""

    def read(file: Iterator[str]) -> Iterator[tuple[int, list[str]]]:
        reader = csv.reader(file)
        next(reader, None)  # header
        for cells in reader:
            if len(cells) < min_columns:
                raise ValueError(f"{path}, line {reader.line_num}: expected {min_columns} columns, got {len(cells)}.")
            yield reader.line_num, cells

    return _utf8_rows(path, read)


def read_llm_caption_csv(source: str, annotations: Path) -> Iterator[RawSample]:
    """RadImageNet, CheXpert, ChestX-ray8 and MIMIC-CXR: [image path], [labels], [captions] (, report)."""
    path = annotation_file(source, annotations)
    for line, cells in positional_rows(path, 4 if source == "mimic_cxr" else 3):
        where = f"{path}, line {line}"
        image = literal_list(cells[0], where)
        if len(image) != 1:
            raise ValueError(f"{where}: expected a one-item list of image paths, got {cells[0][:80]!r}.")
        yield RawSample(
            source=source,
            path=image[0],
            captions=literal_list(cells[2], where),
            labels=literal_list(cells[1], where),
            report=(cells[3].strip() or None) if source == "mimic_cxr" else None,
            modality=radimagenet_modality(image[0]) if source == "radimagenet" else "",
        )


def radimagenet_modality(path: str) -> str:
    for part in PurePosixPath(path).parts:
        if part.upper() in RADIMAGENET_MODALITY_FOLDERS:
            return RADIMAGENET_MODALITY_FOLDERS[part.upper()]
    raise ValueError(f"RadImageNet image {path!r} is under no CT, MR or US folder; cannot tell its modality.")


def read_openi(annotations: Path) -> Iterator[RawSample]:
    """`filter_cap.json` gives the original captions; `openai_refined_concepts.json` next to it, index-aligned."""
    original_path = annotation_file("openi", annotations)
    refined_path = original_path.with_name(OPENI_REFINED_CAPTIONS)
    originals = json.loads(original_path.read_text(encoding="utf-8"))["annotations"]
    refined = json.loads(refined_path.read_text(encoding="utf-8"))["refined_captions"]
    if len(originals) != len(refined):
        raise ValueError(
            f"{original_path} has {len(originals)} annotations but {refined_path} has {len(refined)} refined "
            "caption lists; they must be index-aligned."
        )
    for annotation, refined_captions in zip(originals, refined):
        yield RawSample("openi", f"{annotation['image_id']}.png", [annotation["caption"], *refined_captions])


def read_rocov2(annotations: Path) -> Iterator[RawSample]:
    for _, row in csv_rows(annotation_file("rocov2", annotations), ("ID", "Caption")):
        yield RawSample("rocov2", f"train/{row['ID']}.jpg", [row["Caption"]])


def read_pmc_oa(annotations: Path) -> Iterator[RawSample]:
    with annotation_file("pmc_oa", annotations).open(encoding="utf-8") as file:
        for line in file:
            if line.strip():
                row = json.loads(line)
                yield RawSample("pmc_oa", row["image"], [row["caption"]])


def read_llava_med_alignment(annotations: Path) -> Iterator[RawSample]:
    """The caption is the GPT turn of each conversation."""
    for row in json.loads(annotation_file("llava_med_alignment", annotations).read_text(encoding="utf-8")):
        yield RawSample("llava_med_alignment", row["image"], [row["conversations"][1]["value"]])


def read_llava_med_instruct(annotations: Path) -> Iterator[RawSample]:
    """Each figure twice, as UniMed did: first all figure captions, then all in-text mentions."""
    groups = json.loads(annotation_file("llava_med_instruct", annotations).read_text(encoding="utf-8"))
    for group in groups.values():
        for entry in group:
            yield RawSample("llava_med_instruct", f"{entry['pair_id']}.jpg", [entry.get("fig_caption") or ""])
    for group in groups.values():
        for entry in group:
            mentions = entry.get("in_text_mention") or []
            yield RawSample(
                "llava_med_instruct", f"{entry['pair_id']}.jpg", [mentions[0]["tokens"] if mentions else ""]
            )


def read_quilt_1m(annotations: Path) -> Iterator[RawSample]:
    for _, row in csv_rows(annotation_file("quilt_1m", annotations), ("caption", "image_path")):
        yield RawSample("quilt_1m", row["image_path"], [row["caption"]])


def read_retina_flair(annotations: Path) -> Iterator[RawSample]:
    """Every FLAIR-collection CSV of `Retina-Annotations/`, sorted by name: 10 LLM captions, then the sentence."""
    if not annotations.is_dir():
        raise NotADirectoryError(f"retina_flair reads a folder of CSVs (Retina-Annotations/), got {annotations}.")
    paths = sorted(path for path in annotations.glob("*.csv") if path.name not in RETINA_FLAIR_EXCLUDED)
    if not paths:
        raise FileNotFoundError(f"No FLAIR-collection CSV in {annotations}.")
    for path in paths:
        for line, row in csv_rows(path, ("filename", "captions", "sentence_level_captions")):
            where = f"{path}, line {line}"
            yield RawSample(
                "retina_flair",
                row["filename"],
                [*literal_list(row["captions"], where), row["sentence_level_captions"]],
                labels=literal_list(row.get("categories", ""), where),
            )


def read_retina_deepeyenet(annotations: Path) -> Iterator[RawSample]:
    """The last category free of "year" and "//", prefixed; without one, all raw categories (the original drew one
    at random, which would make builds irreproducible)."""
    path = annotation_file("retina_deepeyenet", annotations)
    for line, row in csv_rows(path, ("image", "categories")):
        categories = literal_list(row["categories"], f"{path}, line {line}")
        clean = [category for category in categories if "year" not in category and "//" not in category]
        captions = [DEEPEYENET_PREFIX + clean[-1]] if clean else categories
        yield RawSample("retina_deepeyenet", row["image"], captions, labels=categories)


def read_retina_mm_retinal(annotations: Path) -> Iterator[RawSample]:
    for _, row in csv_rows(annotation_file("retina_mm_retinal", annotations), ("image", "caption")):
        yield RawSample("retina_mm_retinal", row["image"], [row["caption"]])


def read_captions(captions: Path, source: Source) -> Iterator[RawSample]:
    """The JSON lines `dataset_scripts/caption.py` writes, `{"path", "labels", "captions"}`, as samples of `source`."""
    if not captions.is_file():
        raise FileNotFoundError(f"Captions file not found: {captions}.")
    with captions.open(encoding="utf-8") as file:
        for line_number, line in enumerate(file, 1):
            if not line.strip():
                continue
            where = f"{captions}, line {line_number}"
            try:
                row = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{where}: not a JSON line ({error}).") from None
            if not isinstance(row, dict) or not isinstance(row.get("path"), str):
                raise ValueError(f"{where}: expected an object with a `path` string, as caption.py writes.")
            captions_list, labels = row.get("captions"), row.get("labels", [])
            if not all(isinstance(v, list) and all(isinstance(c, str) for c in v) for v in (captions_list, labels)):
                raise ValueError(f"{where}: `captions` and `labels` must be lists of strings.")
            yield RawSample(source.id, row["path"], captions_list, labels=labels, modality=source.modality)


def _llm_caption_reader(source: str) -> Reader:
    return lambda annotations: read_llm_caption_csv(source, annotations)


READERS: dict[str, Reader] = {
    **{source: _llm_caption_reader(source) for source in ("radimagenet", "chexpert", "chestxray8", "mimic_cxr")},
    "openi": read_openi,
    "rocov2": read_rocov2,
    "pmc_oa": read_pmc_oa,
    "llava_med_alignment": read_llava_med_alignment,
    "llava_med_instruct": read_llava_med_instruct,
    "quilt_1m": read_quilt_1m,
    "retina_flair": read_retina_flair,
    "retina_deepeyenet": read_retina_deepeyenet,
    "retina_mm_retinal": read_retina_mm_retinal,
}
