"""Shard building from tiny raw sources written in each source's real layout, loaded back with `datasets`."""

import csv
import hashlib
import json
import subprocess
import sys
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from datasets import load_dataset
from huggingface_hub.utils import filter_repo_objects
from PIL import Image

from dataset_scripts import build, caption, shards
from dataset_scripts.build import build_lock, build_registered
from dataset_scripts.images import FolderImages
from dataset_scripts.readers import READERS, RawSample, literal_list, read_captions
from dataset_scripts.shards import BuildSettings, plan_shards
from unimedclip.data import load_unimed
from unimedclip.data.manifest import verify_output
from unimedclip.data.sources import SOURCES, captioned_source, get_source
from unimedclip.release.dataset_card import render_card
from unimedclip.release.hub import push_dataset_to_hub

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = BuildSettings(shard_size=2, shard_multiple=2)


@dataclass
class RawSource:
    root: Path
    annotations: Path
    expected: list[dict] = field(default_factory=list)  # per sample in annotation order; None = skipped

    def image(self, relative: str, fmt: str = "PNG", mode: str = "RGB", size: tuple[int, int] = (12, 10)) -> str:
        rng = np.random.default_rng(zlib.crc32(relative.encode()))
        shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path, fmt)
        return relative

    def expect(self, path: str, captions: list[str], modality: str, report: str | None = None, labels=()) -> None:
        self.expected.append(
            {"path": path, "captions": captions, "modality": modality, "report": report, "labels": list(labels)}
        )


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([header, *rows])
    return path


def llm_captions(stem: str) -> list[str]:
    return [f"{stem} caption {index}." for index in range(10)]


def make_raw_sources(base: Path) -> dict[str, RawSource]:
    sources = {}

    radimagenet = RawSource(base / "radimagenet", base / "radimagenet/radiology_ai")
    rows = []
    for folder, modality in [("CT", "ct"), ("MR", "mri"), ("US", "ultrasound")]:
        for index in range(2):
            path = radimagenet.image(f"radiology_ai/{folder}/abd/normal/{folder.lower()}{index}.png", mode="L")
            rows.append([str([path]), str(["normal"]), str(llm_captions(path))])
            radimagenet.expect(path, llm_captions(path), modality, labels=["normal"])
    write_csv(radimagenet.annotations / "radimagenet_with_captions_training_set.csv", ["path", "label", "cap"], rows)
    sources["radimagenet"] = radimagenet

    for source, csv_name, stems in [
        ("chexpert", "chexpert_with_captions_only_frontal_view.csv", ["train/patient00001/study1/view1_frontal"]),
        ("chestxray8", "Chest-Xray8_with_captions.csv", ["00000001_000"]),
    ]:
        raw = RawSource(base / source, base / source / csv_name)
        rows = []
        for index in range(3):
            path = raw.image(f"{stems[0]}_{index}.jpg", "JPEG", "L")
            rows.append([str([path]), str(["Pneumonia", "Effusion"]), str(llm_captions(path))])
            raw.expect(path, llm_captions(path), "xray", labels=["Pneumonia", "Effusion"])
        write_csv(raw.annotations, ["0", "1", "2"], rows)
        sources[source] = raw

    mimic = RawSource(base / "mimic-cxr-jpg", base / "mimic-cxr-jpg/annotations")
    rows = []
    for index, report in enumerate(["FINDINGS: clear lungs.\nIMPRESSION: normal.", ""]):
        path = mimic.image(f"files/p10/p1000003{index}/s5041426{index}/view.jpg", "JPEG")
        rows.append([str([path]), str(["No Finding"]), str(llm_captions(path)), report])
        mimic.expect(path, llm_captions(path), "xray", report=report or None, labels=["No Finding"])
    write_csv(mimic.annotations / "mimic_cxr_with_captions_and_reports_only_frontal_view.csv", list("abcd"), rows)
    sources["mimic_cxr"] = mimic

    openi = RawSource(base / "openI/image", base / "openI/filter_cap.json")
    annotations, refined = [], []
    for index in range(2):
        image_id = f"CXR{index}_1_IM-0001-3001"
        openi.image(f"{image_id}.png")
        annotations.append({"image_id": image_id, "caption": f"No acute disease {index}."})
        refined.append([f"refined {index} a", f"refined {index} b"])
        openi.expect(f"{image_id}.png", [annotations[-1]["caption"], *refined[-1]], "xray")
    openi.annotations.write_text(json.dumps({"annotations": annotations}))
    (base / "openI/openai_refined_concepts.json").write_text(json.dumps({"refined_captions": refined}))
    sources["openi"] = openi

    rocov2 = RawSource(base / "ROCOv2", base / "ROCOv2/train_captions.csv")
    rows = []
    for index in range(2):
        identifier = f"ROCOv2_2023_train_00000{index}"
        rocov2.image(f"train/{identifier}.jpg", "JPEG")
        rows.append([identifier, f" CT of the abdomen {index}.\n"])
        rocov2.expect(f"train/{identifier}.jpg", [f"CT of the abdomen {index}."], "mixed")
    write_csv(rocov2.annotations, ["ID", "Caption"], rows)
    sources["rocov2"] = rocov2

    pmc = RawSource(base / "pmc_oa/caption_T060_filtered_top4_sep_v0_subfigures", base / "pmc_oa/pmc_oa.jsonl")
    lines = []
    for index in range(2):
        path = pmc.image(f"PMC21231{index}_Fig3_4.jpg", "JPEG")
        lines.append(json.dumps({"image": path, "caption": f"Histology of lesion {index}"}))
        pmc.expect(path, [f"Histology of lesion {index}"], "mixed")
    pmc.annotations.write_text("\n".join(lines) + "\n")
    sources["pmc_oa"] = pmc

    alignment = RawSource(base / "llava_med/images", base / "llava_med/llava_med_alignment_500k_filtered.json")
    rows = []
    for index in range(2):
        path = alignment.image(f"3463009{index}_F2.jpg", "JPEG")
        turns = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": f"An MRI {index}.\n"}]
        rows.append({"id": str(index), "image": path, "conversations": turns})
        alignment.expect(path, [f"An MRI {index}."], "mixed")
    alignment.annotations.write_text(json.dumps(rows))
    sources["llava_med_alignment"] = alignment

    instruct = RawSource(base / "llava_med/images", base / "llava_med/llava_med_instruct_fig_captions.json")
    entries = []
    for index, mention in enumerate([[{"tokens": "as shown in Figure 2"}], None]):
        pair_id = f"PMC700000{index}_fig{index}"
        instruct.image(f"{pair_id}.jpg", "JPEG")
        entries.append({"pair_id": pair_id, "fig_caption": f"Figure {index}.", "in_text_mention": mention})
        instruct.expect(f"{pair_id}.jpg", [f"Figure {index}."], "mixed")
    instruct.expect("PMC7000000_fig0.jpg", ["as shown in Figure 2"], "mixed")
    instruct.expected.append(None)  # no in-text mention: skipped, counted as "no caption"
    instruct.annotations.write_text(json.dumps({"10_000": entries}))
    sources["llava_med_instruct"] = instruct

    quilt = RawSource(base / "Quilt/quilt_1m", base / "Quilt/quilt_1M_lookup.csv")
    rows = []
    for index in range(2):
        path = quilt.image(f"quilt{index}.jpg", "JPEG")
        rows.append([index, f"H&E stain {index}", path, "openpath"])
        quilt.expect(path, [f"H&E stain {index}"], "pathology")
    write_csv(quilt.annotations, ["", "caption", "image_path", "subset"], rows)
    sources["quilt_1m"] = quilt

    retina_root, retina_annotations = base / "Retina-Datasets", base / "Retina-Datasets/Retina-Annotations"
    flair = RawSource(retina_root, retina_annotations)
    for csv_name, path, fmt in [("03_IDRID.csv", "03_IDRID/a.jpg", "JPEG"), ("23_HRF.csv", "23_HRF/01_h.tif", "TIFF")]:
        flair.image(path, fmt)
        write_csv(
            retina_annotations / csv_name,
            ["filename", "captions", "sentence_level_captions"],
            [[path, str(llm_captions(path)), f"sentence for {path}"]],
        )
        flair.expect(path, [*llm_captions(path), f"sentence for {path}"], "fundus")
    write_csv(retina_annotations / "01_EYEPACS_revised.csv", ["filename", "captions"], [["x.jpg", "[]"]])
    sources["retina_flair"] = flair

    deepeyenet = RawSource(retina_root, retina_annotations)
    rows = []
    for index, categories in enumerate([["central serous chorioretinopathy", "53-year-old"], ["23-year-old//"]]):
        path = deepeyenet.image(f"06_DEN/train_set/{index}.jpg", "JPEG")
        rows.append([path, str(categories), str(["attribute"])])
        captions = [f"The fundus image of {categories[0]}"] if index == 0 else categories
        deepeyenet.expect(path, captions, "fundus", labels=categories)
    write_csv(retina_annotations / "06_DEN.csv", ["image", "categories", "atributes"], rows)
    sources["retina_deepeyenet"] = deepeyenet

    mm_retinal = RawSource(retina_root, retina_annotations)
    rows = []
    for index in range(2):
        path = mm_retinal.image(f"MM-Retinal/CFP/{index}.png")
        rows.append([path, f"Fundus photograph {index}"])
        mm_retinal.expect(path, [f"Fundus photograph {index}"], "fundus")
    write_csv(retina_annotations / "39_MM_Retinal_dataset.csv", ["image", "caption"], rows)
    sources["retina_mm_retinal"] = mm_retinal
    return sources


@pytest.fixture(scope="module")
def raw_sources(tmp_path_factory) -> dict[str, RawSource]:
    return make_raw_sources(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def built(raw_sources, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("unimed")
    for source, raw in raw_sources.items():
        build_registered(source, raw.root, raw.annotations, output, SETTINGS)
    render_card(output)
    return output


def expected_samples(raw_sources: dict[str, RawSource], modality: str | None = None) -> dict[str, dict]:
    return {
        f"{source}-{index:09d}": {**sample, "root": raw.root}
        for source, raw in raw_sources.items()
        for index, sample in enumerate(raw.expected)
        if sample is not None and modality in (None, sample["modality"])
    }


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_every_source_loads_back_with_datasets(built, raw_sources):
    loaded = {sample["__key__"]: sample for sample in load_dataset(str(built), "all", split="train", streaming=True)}
    expected = expected_samples(raw_sources)
    assert set(loaded) == set(expected)
    assert {key.rsplit("-", 1)[0] for key in loaded} == set(READERS)
    for key, sample in loaded.items():
        want = expected[key]
        record = sample["json"]
        assert record["captions"] == want["captions"]
        assert (record["path"], record["modality"], record["report"]) == (
            want["path"],
            want["modality"],
            want["report"],
        )
        assert record["labels"] == want["labels"] and record["resized_from"] is None
        assert isinstance(sample["image"], Image.Image)
        np.testing.assert_array_equal(np.asarray(sample["image"]), np.asarray(Image.open(want["root"] / want["path"])))


def test_modality_config_holds_only_its_samples(built, raw_sources):
    xray = load_dataset(str(built), "xray", split="train", streaming=True)
    assert {sample["__key__"] for sample in xray} == set(expected_samples(raw_sources, "xray"))
    assert xray.num_shards % SETTINGS.shard_multiple == 0


def test_image_bytes_are_untouched(built, raw_sources):
    shard = next((built / "data/xray").glob("chexpert-*.tar"))
    with tarfile.open(shard) as tar:
        member = next(member for member in tar.getmembers() if member.name.endswith(".image"))
        record = json.loads(tar.extractfile(member.name.replace(".image", ".json")).read())
        assert tar.extractfile(member).read() == (raw_sources["chexpert"].root / record["path"]).read_bytes()


def test_manifest_matches_files_and_shards_divide_by_the_multiple(built, raw_sources):
    manifest = json.loads((built / "manifest.json").read_text())
    for entry in manifest["shards"]:
        assert hashlib.sha256((built / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
        assert (built / entry["path"]).stat().st_size == entry["bytes"]
    per_group = {}
    for entry in manifest["shards"]:
        per_group[entry["source"], entry["modality"]] = per_group.get((entry["source"], entry["modality"]), 0) + 1
    assert all(count % SETTINGS.shard_multiple == 0 for count in per_group.values())
    assert manifest["sources"]["llava_med_instruct"]["skipped"] == {"no caption": 1}
    assert manifest["sources"]["radimagenet"]["modalities"] == {"ct": 2, "mri": 2, "ultrasound": 2}
    verify_output(built)


def test_card_declares_configs_features_and_licences(built, raw_sources):
    card_text = (built / "README.md").read_text()
    metadata = yaml.safe_load(card_text.split("---")[1])
    configs = {config["config_name"]: config for config in metadata["configs"]}
    assert list(configs) == ["xray", "ct", "mri", "ultrasound", "pathology", "fundus", "mixed", "all"]
    assert configs["all"]["data_files"] == [{"split": "train", "path": "data/*/*.tar"}]
    infos = {info["config_name"]: info for info in metadata["dataset_info"]}
    assert {"name": "image", "dtype": "image"} in infos["xray"]["features"]
    assert infos["all"]["splits"][0]["num_examples"] == len(expected_samples(raw_sources))
    assert "2412.10372" in card_text and "| MIMIC-CXR-JPG (frontal) | xray | 2 | 0 | credentialed | no |" in card_text
    assert (metadata["license"], metadata["license_link"], metadata["language"]) == ("other", "LICENSE.md", "en")
    assert metadata["license_name"] == "unimed-per-source-terms" and metadata["size_categories"] == "n<1K"
    licences = (built / "LICENSE.md").read_text()
    assert "| MIMIC-CXR-JPG (frontal) | credentialed | no | https://physionet.org/content/mimic-cxr-jpg/ |" in licences


def test_missing_and_corrupt_images_are_skipped_and_counted(tmp_path, raw_sources, capsys):
    raw = make_raw_sources(tmp_path / "raw")["chexpert"]
    paths = [sample["path"] for sample in raw.expected]
    (raw.root / paths[0]).unlink()
    (raw.root / paths[1]).write_bytes((raw.root / paths[1]).read_bytes()[:40])  # truncated JPEG
    output = tmp_path / "out"
    build.main(["--source", "chexpert", "--root", str(raw.root), "--annotations", str(raw.annotations),
                "--output", str(output), "--shard-size", "2", "--shard-multiple", "2"])  # fmt: skip
    assert "chexpert: 1 samples in 2 shards; skipped: 1 missing image, 1 unreadable image" in capsys.readouterr().out
    keys = [sample["__key__"] for sample in load_dataset(str(output), "xray", split="train", streaming=True)]
    assert keys == ["chexpert-000000002"]


def test_interrupted_build_resumes_to_identical_bytes(tmp_path, raw_sources, monkeypatch):
    raw = raw_sources["radimagenet"]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    build_registered("radimagenet", raw.root, raw.annotations, reference, SETTINGS)

    write_shard, calls = shards.write_shard, []

    def crash_after_three(output, task):
        calls.append(task.path)
        if len(calls) > 3:
            (output / task.path).with_suffix(".tar.partial").write_bytes(b"half a shard")
            raise KeyboardInterrupt
        return write_shard(output, task)

    monkeypatch.setattr(shards, "write_shard", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        build_registered("radimagenet", raw.root, raw.annotations, resumed, SETTINGS)
    calls.clear()
    monkeypatch.setattr(
        shards, "write_shard", lambda output, task: calls.append(task.path) or write_shard(output, task)
    )
    build_registered("radimagenet", raw.root, raw.annotations, resumed, SETTINGS)
    assert len(calls) == 6 - 3  # the three finished shards were verified and kept
    assert folder_bytes(resumed) == folder_bytes(reference)


def test_altered_shard_is_rewritten_and_conflicting_settings_refused(tmp_path, raw_sources):
    raw = raw_sources["openi"]
    build_registered("openi", raw.root, raw.annotations, tmp_path, SETTINGS)
    reference = folder_bytes(tmp_path)
    shard = next((tmp_path / "data/xray").glob("*.tar"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="missing or altered"):
        verify_output(tmp_path)
    shard.write_bytes(b"corrupted")
    with pytest.raises(ValueError, match="missing or altered"):
        verify_output(tmp_path)
    build_registered("openi", raw.root, raw.annotations, tmp_path, SETTINGS)
    assert folder_bytes(tmp_path) == reference
    with pytest.raises(ValueError, match="built with"):
        build_registered("openi", raw.root, raw.annotations, tmp_path, BuildSettings(shard_size=1, shard_multiple=2))
    (tmp_path / "data/xray/stray.tar").write_bytes(b"")
    with pytest.raises(ValueError, match="not in the manifest"):
        verify_output(tmp_path)


def test_plan_spreads_samples_over_a_multiple_of_shards():
    samples = [RawSample("rocov2", f"{index}.jpg", ["c"]) for index in range(37)]
    tasks = plan_shards(
        get_source("rocov2"), FolderImages(Path(".")), samples, BuildSettings(shard_size=4, shard_multiple=4)
    )
    assert len(tasks) == 12 and {len(task.samples) for task in tasks} == {3, 4}
    planned = [sample.path for task in tasks for _, sample in task.samples]
    # Every sample once, shuffled across shards (annotation files group a patient's images), the same every time.
    assert sorted(planned) == sorted(f"{index}.jpg" for index in range(37))
    assert planned != [f"{index}.jpg" for index in range(37)]
    again = plan_shards(
        get_source("rocov2"), FolderImages(Path(".")), samples, BuildSettings(shard_size=4, shard_multiple=4)
    )
    assert [sample.path for task in again for _, sample in task.samples] == planned
    assert tasks[0].path == "data/mixed/rocov2-00000-of-00012.tar"
    with pytest.raises(ValueError, match="fewer than --shard-multiple"):
        plan_shards(get_source("rocov2"), FolderImages(Path(".")), samples[:3], BuildSettings(shard_multiple=4))


def test_resize_short_side_reencodes_and_records_the_original_size(tmp_path, raw_sources):
    raw = raw_sources["retina_flair"]
    build_registered("retina_flair", raw.root, raw.annotations, tmp_path, BuildSettings(2, 2, resize_short_side=5))
    render_card(tmp_path)
    samples = list(load_dataset(str(tmp_path), "fundus", split="train", streaming=True))
    assert len(samples) == 2
    for sample in samples:
        assert sample["json"]["resized_from"] == [12, 10] and sample["image"].size == (6, 5)
        assert sample["image"].format == ("JPEG" if sample["json"]["path"].endswith(".jpg") else "PNG")


def test_bad_annotations_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="line 7: expected a Python list literal"):
        literal_list("['unclosed", "file.csv, line 7")
    path = write_csv(tmp_path / "radimagenet_with_captions_training_set.csv", ["a", "b", "c"], [
        [str(["radiology_ai/XR/chest.png"]), "[]", "['c']"]
    ])  # fmt: skip
    with pytest.raises(ValueError, match="no CT, MR or US folder"):
        list(READERS["radimagenet"](path))
    with pytest.raises(ValueError, match="missing column"):
        list(READERS["rocov2"](write_csv(tmp_path / "train_captions.csv", ["id", "caption"], [["a", "b"]])))
    latin1 = tmp_path / "latin1" / "train_captions.csv"
    latin1.parent.mkdir()
    latin1.write_bytes("ID,Caption\nROCO_1,Radiografía de tórax\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1/train_captions.csv is not UTF-8 text .*save it as UTF-8"):
        list(READERS["rocov2"](latin1))


class FakeHfApi:
    def __init__(self, existing_public: bool = False):
        self.calls, self.existing_public = [], existing_public

    def repo_exists(self, repo_id, repo_type):
        return self.existing_public

    def repo_info(self, repo_id, repo_type):
        return SimpleNamespace(private=not self.existing_public)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return f"https://huggingface.co/datasets/{kwargs['repo_id']}/commit/1"

    def uploaded_files(self) -> list[str]:
        """What the last `upload_folder` sent, selected the way huggingface_hub selects it."""
        kwargs = self.calls[-1][1]
        folder = Path(kwargs["folder_path"])
        files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
        allow, ignore = kwargs.get("allow_patterns"), kwargs.get("ignore_patterns")
        return sorted(filter_repo_objects(files, allow_patterns=allow, ignore_patterns=ignore))


def test_upload_refuses_gated_sources_unless_private_and_allowed(tmp_path, raw_sources):
    open_only, gated = tmp_path / "open", tmp_path / "gated"
    build_registered("openi", raw_sources["openi"].root, raw_sources["openi"].annotations, open_only, SETTINGS)
    api = FakeHfApi()
    assert push_dataset_to_hub(open_only, "me/unimed-open", api=api).endswith("/commit/1")
    assert api.calls[-1][1]["repo_type"] == "dataset" and (open_only / "README.md").exists()

    raw = raw_sources["mimic_cxr"]
    build_registered("mimic_cxr", raw.root, raw.annotations, gated, SETTINGS)
    api = FakeHfApi()
    with pytest.raises(PermissionError, match="mimic_cxr"):
        push_dataset_to_hub(gated, "me/unimed", api=api)
    with pytest.raises(PermissionError):
        push_dataset_to_hub(gated, "me/unimed", allow_gated_in_private_repo=True, api=api)
    assert api.calls == []
    with pytest.raises(PermissionError, match="is public"):
        push_dataset_to_hub(gated, "me/u", private=True, allow_gated_in_private_repo=True, api=FakeHfApi(True))
    push_dataset_to_hub(gated, "me/unimed", private=True, allow_gated_in_private_repo=True, api=api)
    assert api.calls[0] == ("create_repo", "me/unimed", {"repo_type": "dataset", "private": True, "exist_ok": True})


def test_cli_builds_several_sources_from_a_config(tmp_path, raw_sources):
    config = {
        source: {"root": str(raw_sources[source].root), "annotations": str(raw_sources[source].annotations)}
        for source in ("rocov2", "quilt_1m")
    }
    (tmp_path / "sources.yaml").write_text(yaml.safe_dump(config))
    output = tmp_path / "out"
    build.main(["--source", "all", "--config", str(tmp_path / "sources.yaml"), "--output", str(output),
                "--shard-size", "2", "--shard-multiple", "2"])  # fmt: skip
    manifest = json.loads((output / "manifest.json").read_text())
    assert set(manifest["sources"]) == {"rocov2", "quilt_1m"}
    card = (output / "README.md").read_text()
    assert "config_name: pathology" in card and "| RadImageNet | ct/mri/ultrasound | not included |" in card
    parallel = tmp_path / "parallel"
    build.main(["--source", "all", "--config", str(tmp_path / "sources.yaml"), "--output", str(parallel),
                "--shard-size", "2", "--shard-multiple", "2", "--num-proc", "2"])  # fmt: skip
    assert folder_bytes(parallel) == folder_bytes(output)
    with pytest.raises(SystemExit):
        build.parse_args(["--source", "chexpert", "--output", str(output)])


def test_registry_and_readers_pair_up():
    """A registry row without a reader would be offered by `build.py --source` and fail there; a reader without a row
    would write records of an unknown source."""
    assert set(READERS) == set(SOURCES) and "all" not in SOURCES


def caption_and_build(dataset: str, output: Path, source_id: str, extra_lines: list[dict] = ()) -> Path:
    """`caption.py` then `build.py --captions`, as the README runs them; returns the captions file."""
    captions = output.parent / f"{source_id}.jsonl"
    caption.main(
        ["--dataset", dataset, "--modality", "xray", "--llm", "template", "--n", "10", "--out", str(captions)]
    )
    with captions.open("a") as file:
        file.writelines(json.dumps(line) + "\n" for line in extra_lines)
    build.main(["--captions", str(captions), "--dataset", dataset, "--modality", "xray", "--source-id", source_id,
                "--output", str(output), "--shard-size", "2", "--shard-multiple", "2"])  # fmt: skip
    return captions


def test_own_labelled_images_with_generated_captions_become_a_source_load_unimed_mixes(tmp_path, raw_sources):
    folder = tmp_path / "own"
    for index in range(8):
        label = ["pneumonia", "no finding"][index % 2]
        RawSource(folder, folder).image(f"{label}/{index}.png")
    RawSource(tmp_path, tmp_path).image("secret.png")  # beside the dataset: an annotation must not reach it
    output = tmp_path / "unimed"
    build_registered("openi", raw_sources["openi"].root, raw_sources["openi"].annotations, output, SETTINGS)
    outside = [{"path": "../secret.png", "labels": ["pneumonia"], "captions": ["chest x-ray showing pneumonia."]}]
    captions = caption_and_build(str(folder), output, "my_cxr", outside)

    written = {json.loads(line)["path"]: json.loads(line)["captions"] for line in captions.read_text().splitlines()}
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["sources"]["my_cxr"]["samples"] == 8
    assert manifest["sources"]["my_cxr"]["skipped"] == {"path outside the source folder": 1}
    assert manifest["own_sources"]["my_cxr"]["license_class"] == "private"
    stored = {s["json"]["path"]: s for s in load_dataset(str(output), "xray", split="train", streaming=True)}
    for path, texts in written.items():
        if path.startswith(".."):
            assert path not in stored
            continue
        assert (
            stored[path]["json"]["captions"] == texts and stored[path]["json"]["caption_rule"] == "random_of_first_10"
        )
        assert stored[path]["image"].tobytes() == Image.open(folder / path).tobytes()

    mixed = list(load_unimed(str(output)))
    by_source = Counter(sample["source"] for sample in mixed)
    assert by_source == {"my_cxr": 8, "openi": len([s for s in raw_sources["openi"].expected if s])}
    keys = {f"my_cxr-{index:09d}": path for index, path in enumerate(written)}
    for sample in mixed:
        if sample["source"] == "my_cxr":
            assert sample["caption"] in written[keys[sample["__key__"]]][:10]
    card = (output / "README.md").read_text()
    assert "| my_cxr | xray | 8 | 1 | private | no |" in card
    with pytest.raises(PermissionError, match="my_cxr"):
        push_dataset_to_hub(output, "me/unimed", api=FakeHfApi())


def test_a_hugging_face_dataset_with_captions_becomes_a_source(tmp_path):
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["benign", "malignant"])}
    )
    pictures = [Image.fromarray(np.full((6, 5, 3), 40 * index, dtype=np.uint8)) for index in range(4)]
    table = datasets.Dataset.from_dict({"image": pictures, "label": [0, 1, 0, 1]}, features=features)
    datasets.DatasetDict({"train": table}).save_to_disk(tmp_path / "saved")
    output = tmp_path / "unimed"
    caption_and_build(str(tmp_path / "saved"), output, "my_thyroid")
    stored = {s["json"]["path"]: s for s in load_dataset(str(output), "xray", split="train", streaming=True)}
    assert sorted(stored) == [f"train/{index}" for index in range(4)]
    for index, picture in enumerate(pictures):
        assert stored[f"train/{index}"]["image"].tobytes() == picture.tobytes()
        assert stored[f"train/{index}"]["json"]["labels"] == [["benign", "malignant"][index % 2]]


def test_captioned_source_arguments_are_checked(tmp_path, capsys):
    base = ["--captions", str(tmp_path / "c.jsonl"), "--output", str(tmp_path)]
    with pytest.raises(SystemExit):
        build.parse_args(base)
    assert "--captions needs --dataset, --modality, --source-id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build.parse_args([*base, "--dataset", "d", "--modality", "xray", "--source-id", "chexpert"])
    assert "'chexpert' is one of UniMed's own sources" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build.parse_args([*base, "--dataset", "d", "--modality", "xray", "--source-id", "My Data"])
    assert "lowercase letters, digits and underscores" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"path": "a.png", "captions": "not a list"}\n')
    with pytest.raises(ValueError, match="bad.jsonl, line 1: `captions` and `labels` must be lists of strings"):
        list(read_captions(tmp_path / "bad.jsonl", captioned_source("x", "xray")))


def test_annotation_paths_outside_the_source_folder_are_refused_and_counted(tmp_path):
    """An image id such as `../../../secret/private` or an absolute path (Quilt-1M rows have an `image_path`) must
    not pack a file from outside the folder the user named into a shard marked openly licensed."""
    secret = tmp_path / "secret" / "private.png"
    secret.parent.mkdir()
    Image.new("RGB", (8, 8), "red").save(secret)
    raw = RawSource(tmp_path / "quilt", tmp_path / "quilt" / "quilt_1M_lookup.csv")
    rows = [["0", "a slide", raw.image(f"images/{index}.png"), "train"] for index in range(3)]
    rows += [["3", "escapes", "../secret/private.png", "train"], ["4", "absolute", str(secret), "train"]]
    write_csv(raw.annotations, ["", "caption", "image_path", "subset"], rows)
    output = tmp_path / "unimed"
    summary = build_registered("quilt_1m", raw.root, raw.annotations, output, BuildSettings(1, 1))
    assert summary["samples"] == 3 and summary["skipped"] == {"path outside the source folder": 2}
    secret_bytes = secret.read_bytes()
    for shard in output.glob("data/*/*.tar"):
        with tarfile.open(shard) as tar:
            assert all(tar.extractfile(member).read() != secret_bytes for member in tar if member.isfile())


def test_dataset_upload_sends_exactly_what_the_manifest_and_card_name(tmp_path, raw_sources):
    output = tmp_path / "unimed"
    build_registered("openi", raw_sources["openi"].root, raw_sources["openi"].annotations, output, SETTINGS)
    (output / "raw-copy").mkdir()
    (output / "raw-copy" / "CXR1.png").write_bytes(b"a raw source copy")
    (output / ".token-backup").write_text("hf_secret")
    api = FakeHfApi()
    push_dataset_to_hub(output, "me/unimed-open", api=api)
    manifest = json.loads((output / "manifest.json").read_text())
    assert api.uploaded_files() == sorted(
        ["LICENSE.md", "README.md", "manifest.json", *(entry["path"] for entry in manifest["shards"])]
    )


def test_a_second_concurrent_build_into_one_folder_is_refused(tmp_path, raw_sources):
    raw = raw_sources["openi"]
    output = tmp_path / "unimed"
    command = [
        sys.executable, "dataset_scripts/build.py", "--source", "openi", "--root", str(raw.root),
        "--annotations", str(raw.annotations), "--output", str(output), "--shard-size", "2", "--shard-multiple", "2",
    ]  # fmt: skip
    with build_lock(output):  # another build holds the folder
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and f"another build is writing to {output}" in result.stderr
    assert "Traceback" not in result.stderr and not (output / "manifest.json").exists()
    processes = [subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [process.communicate(timeout=300)[1] for process in processes]
    # One build wins the folder; the other is refused, or ran after it; the manifest matches the files either way.
    assert 0 in [process.returncode for process in processes]
    for process, error in zip(processes, errors):
        assert process.returncode == 0 or "another build is writing to" in error, error[-2000:]
    verify_output(output)
