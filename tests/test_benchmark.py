"""The benchmark dataset: the archive's folders packed into a script-free Hub dataset (one config per test set, the
catalog's classes as a ClassLabel, the image bytes untouched), its card and manifest, its verified and licence-aware
upload, and evaluation from it (downloaded or streamed) giving exactly the numbers the folders give."""

import io
import json
import shutil

import datasets
import numpy as np
import pytest
from huggingface_hub import DatasetCard
from huggingface_hub.utils import filter_repo_objects
from PIL import Image
from test_evaluation import materialize

from dataset_scripts import benchmark
from unimedclip.data.manifest import file_sha256, load_manifest, verify_output
from unimedclip.evaluation import catalog_dataset, load_catalog
from unimedclip.evaluation import command as evaluate_command
from unimedclip.evaluation.readers import BENCHMARK_REPO
from unimedclip.release.hub import push_dataset_to_hub

# One catalog dataset per loader layout: CSV with label values (an AUC dataset), file names (PCam, in the archive's
# uzair/ folder), category lists (a retina CSV), one-hot columns (CheXpert) and class folders (LC25000).
KEYS = ["acl_mri", "PCAM", "five_retina", "chexpert-5x200", "LC25000_colon"]
PER_CLASS = 3
PALETTE = np.random.default_rng(7).integers(30, 226, (16, 3))


def write_archive(root, keys=KEYS, per_class=PER_CLASS) -> None:
    """The catalog datasets `keys` in the archive's layout, each class in a colour of its own: a model's predictions
    then depend on the class, so a label that goes astray changes the numbers."""
    catalog = load_catalog()
    for key in keys:
        materialize(catalog[key], root, per_class=per_class)
        for index, sample in enumerate(catalog_dataset(key, catalog[key], root).samples):
            noise = np.random.default_rng(index).normal(0, 25, (36, 44, 3))
            Image.fromarray(np.clip(PALETTE[sample.label] + noise, 0, 255).astype(np.uint8)).save(sample.image)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    write_archive(root)
    return root


@pytest.fixture(scope="module")
def built(archive, tmp_path_factory):
    output = tmp_path_factory.mktemp("benchmark")
    outcome = benchmark.build_benchmark(archive, output)
    assert {key for key, line in outcome.items() if "samples" in line} == set(KEYS)
    assert all("missing" in line for key, line in outcome.items() if key not in KEYS)
    return output


def test_one_config_per_test_set_with_the_catalog_classes_and_the_archive_bytes(archive, built):
    catalog = load_catalog()
    assert set(datasets.get_dataset_config_names(str(built))) == set(KEYS)
    for key in KEYS:
        loaded = datasets.load_dataset(str(built), key, split="test")
        assert isinstance(loaded.features["label"], datasets.ClassLabel) and isinstance(
            loaded.features["image"], datasets.Image
        )
        assert loaded.features["label"].names == catalog[key]["classes"]
        folder = catalog_dataset(key, catalog[key], archive).samples
        # The folder's samples, in the order they are evaluated in: same label, same path, the very same bytes.
        assert loaded["label"] == [sample.label for sample in folder]
        assert loaded["path"] == [sample.image.relative_to(archive).as_posix() for sample in folder]
        raw = loaded.cast_column("image", datasets.Image(decode=False))["image"]
        assert [image["bytes"] for image in raw] == [sample.image.read_bytes() for sample in folder]
    assert loaded[0]["image"].size == (44, 36)


def test_card_metadata_manifest_and_licences(built):
    catalog = load_catalog()
    card = DatasetCard.load(built / "README.md")
    assert [config["config_name"] for config in card.data.configs] == [key for key in catalog if key in KEYS]
    per_config = {entry["config_name"]: entry for entry in card.data.benchmark}
    for key in KEYS:
        assert per_config[key]["modality"] == catalog[key]["modality"]
        assert per_config[key]["metric"] == catalog[key]["metric"]
    infos = {info["config_name"]: info for info in card.data.dataset_info}
    assert infos["five_retina"]["splits"][0]["num_examples"] == 4 * PER_CLASS
    # Every one of the 21 datasets is listed with its licence, whether this copy holds it or not.
    for key, entry in catalog.items():
        row = next(line for line in card.text.splitlines() if line.startswith(f"| `{key}` |"))
        assert entry["origin"]["license"] in row and ("| yes |" in row) == (key in KEYS)
    assert "unimedclip benchmark --data-root" in card.text
    assert "CC0 1.0" in (built / "LICENSE.md").read_text()

    manifest = load_manifest(built)
    assert manifest["format"] == "parquet" and {entry["source"] for entry in manifest["shards"]} == set(KEYS)
    for entry in manifest["shards"]:
        assert file_sha256(built / entry["path"]) == entry["sha256"]
    assert manifest["sources"]["chexpert-5x200"]["samples"] == 5 * PER_CLASS
    verify_output(built)


def test_the_benchmark_gives_the_numbers_of_the_folders(archive, built, model_dir, tmp_path):
    """Downloaded or streamed, the Hub dataset's numbers are the folders' numbers, to the last bit."""
    common = ["--model", str(model_dir), "--num-workers", "0", "--cache-dir", str(tmp_path / "cache")]
    folders = evaluate_command.main([*common, "--data-root", str(archive), "--output", str(tmp_path / "folders")])
    hub = evaluate_command.main([*common, "--data", str(built), "--output", str(tmp_path / "hub")])
    streamed = evaluate_command.main(
        [*common, "--data", str(built), "--streaming", "--datasets", *KEYS, "--output", str(tmp_path / "streamed")]
    )

    def numbers(report):
        return {
            key: {name: value for name, value in result.items() if name not in ("hub_dataset", "unreadable_examples")}
            for key, result in report["results"].items()
        }

    assert set(folders["results"]) == set(KEYS)
    assert numbers(hub) == numbers(folders) and numbers(streamed) == numbers(folders)
    assert folders["summary"] == hub["summary"]
    values = [result["value"] for result in folders["results"].values()]
    assert len(set(values)) > 1, "a fixture on which every dataset scores alike cannot show a mix-up"
    assert tuple(hub["results"]["PCAM"]["hub_dataset"]) == (BENCHMARK_REPO, "PCAM")
    assert hub["model_index"] == folders["model_index"]
    # The datasets the build does not hold are reported as missing, with the way to build them.
    assert "does not hold BACH" in hub["skipped"]["BACH"] and "unimedclip benchmark" in hub["skipped"]["BACH"]


def test_classes_that_differ_from_the_catalog_are_refused(built, model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    readme = (copy / "README.md").read_text().replace("'1': ACL tear", "'1': meniscal tear")
    (copy / "README.md").write_text(readme)
    arguments = ["--model", str(model_dir), "--data", str(copy), "--datasets", "acl_mri", "--num-workers", "0"]
    with pytest.raises(SystemExit, match="1 failed"):
        evaluate_command.main([*arguments, "--output", str(tmp_path / "out")])
    failure = json.loads((tmp_path / "out" / "results.json").read_text())["failed"]["acl_mri"]
    assert "are not the catalog's" in failure and "meniscal tear" in failure
    with pytest.raises(SystemExit, match="Cannot read the benchmark dataset"):
        evaluate_command.main(["--model", str(model_dir), "--data", str(tmp_path / "nothing"), "--output", "x"])


def test_unreadable_missing_and_outside_images_are_skipped_and_counted(tmp_path):
    catalog = load_catalog()
    write_archive(tmp_path / "archive", ["acl_mri"])
    (tmp_path / "archive" / "acl_mri" / "img_0_1.png").write_bytes(b"not a png")
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(secret)
    table = tmp_path / "archive" / "acl_mri" / "test_fold1.csv"
    rows = table.read_text().splitlines()
    rows += ["../../secret.png,yes", f"{secret},no", "gone.png,no"]
    table.write_text("\n".join(rows) + "\n")

    outcome = benchmark.build_benchmark(tmp_path / "archive", tmp_path / "out", ["acl_mri"])
    assert outcome["acl_mri"]["samples"] == 2 * PER_CLASS - 1
    assert outcome["acl_mri"]["skipped"] == {
        "missing image": 1,
        "path outside the source folder": 2,
        "unreadable image": 1,
    }
    packed = datasets.load_dataset(str(tmp_path / "out"), "acl_mri", split="test")
    packed = packed.cast_column("image", datasets.Image(decode=False))
    assert secret.read_bytes() not in [image["bytes"] for image in packed["image"]]
    assert all(".." not in path and not path.startswith("/") for path in packed["path"])
    assert load_manifest(tmp_path / "out")["sources"]["acl_mri"]["skipped"]["unreadable image"] == 1
    assert catalog["acl_mri"]["classes"] == packed.features["label"].names


def test_rebuilding_replaces_one_dataset_and_keeps_the_others(archive, built, tmp_path, capsys):
    output = tmp_path / "copy"
    shutil.copytree(built, output)
    before = {entry["path"]: entry["sha256"] for entry in load_manifest(output)["shards"]}
    # Left over from an earlier build in two files, and from an interrupted one.
    pcam = output / "data" / "PCAM"
    (pcam / "test-00000-of-00001.parquet").rename(pcam / "test-00000-of-00002.parquet")
    (pcam / "test-00001-of-00002.parquet").write_bytes(b"the second file of an earlier build")
    (pcam / "test-00007.partial").write_bytes(b"an interrupted build's")
    assert benchmark.build_benchmark(archive, output, ["PCAM"])["PCAM"]["samples"] == 2 * PER_CLASS
    assert {entry["path"]: entry["sha256"] for entry in load_manifest(output)["shards"]} == before  # same bytes
    assert sorted(path.name for path in pcam.iterdir()) == ["test-00000-of-00001.parquet"]
    verify_output(output)

    # A rebuild that fails leaves the previous build as it was.
    broken = tmp_path / "broken"
    shutil.copytree(archive, broken)
    for image in (broken / "uzair" / "PCam_Test_preprocessed").iterdir():
        image.write_bytes(b"truncated")
    outcome = benchmark.build_benchmark(broken, output, ["PCAM"])
    assert "none of its 6 images could be packed" in outcome["PCAM"]["failed"]
    assert {entry["path"]: entry["sha256"] for entry in load_manifest(output)["shards"]} == before
    verify_output(output)

    (output / "data" / "PCAM" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"1 dataset\(s\) failed: PCAM"):
        benchmark.main(["--data-root", str(archive), "--output", str(output), "--datasets", "PCAM", "five_retina"])
    printed = capsys.readouterr().out
    assert "PCAM: failed (ValueError:" in printed and "did not write: ['notes.txt']" in printed
    assert "five_retina: 12 images in 1 file(s)" in printed
    assert (output / "data" / "PCAM" / "notes.txt").read_text() == "mine"
    with pytest.raises(SystemExit, match="Unknown dataset"):
        benchmark.main(["--data-root", str(archive), "--output", str(output), "--datasets", "imagenet"])
    with pytest.raises(SystemExit, match="No dataset of the catalog could be packed"):
        benchmark.main(["--data-root", str(tmp_path), "--output", str(tmp_path / "empty")])


class FakeHfApi:
    """Records what `upload_folder` would send, selecting files with huggingface_hub's own pattern filter."""

    def __init__(self, public: set[str] = frozenset()):
        self.public, self.uploads, self.private = public, [], {}

    def create_repo(self, repo_id, *, private=None, **kwargs):
        self.private[repo_id] = private
        return f"https://huggingface.co/datasets/{repo_id}"

    def repo_exists(self, repo_id, **kwargs):
        return repo_id in self.public

    def repo_info(self, repo_id, **kwargs):
        return type("Info", (), {"private": repo_id not in self.public})()

    def upload_folder(self, *, repo_id, folder_path, allow_patterns, **kwargs):
        everything = [path.relative_to(folder_path).as_posix() for path in folder_path.rglob("*") if path.is_file()]
        files = sorted(filter_repo_objects(everything, allow_patterns=allow_patterns))
        self.uploads.append((repo_id, kwargs.get("repo_type"), self.private[repo_id], files))
        return f"https://huggingface.co/datasets/{repo_id}/commit/0"


def test_upload_sends_exactly_the_listed_files_and_only_what_may_be_hosted(archive, built, tmp_path):
    open_build = tmp_path / "open"
    outcome = benchmark.build_benchmark(archive, open_build, KEYS, redistributable_only=True)
    assert {key for key, line in outcome.items() if "samples" in line} == {"PCAM", "five_retina"}
    assert "does not allow hosting" in outcome["acl_mri"]["missing"]
    (open_build / "notes.txt").write_text("not for the Hub")
    (open_build / ".cache").mkdir()
    (open_build / ".cache" / "x.parquet").write_text("not listed")
    api = FakeHfApi()
    benchmark.push_benchmark_to_hub(open_build, "org/bench", api=api)
    listed = [entry["path"] for entry in load_manifest(open_build)["shards"]]
    assert api.uploads[-1] == (
        "org/bench",
        "dataset",
        False,
        sorted(["LICENSE.md", "README.md", "manifest.json", *listed]),
    )
    assert 'load_dataset("org/bench"' in (open_build / "README.md").read_text()

    # Datasets that may not be redistributed: never to a public repository, to a private one only when asked for.
    with pytest.raises(PermissionError, match="redistribution: LC25000_colon, acl_mri, chexpert-5x200\\. "):
        benchmark.push_benchmark_to_hub(built, "org/bench", api=api)
    with pytest.raises(PermissionError, match="allow-gated-in-private-repo"):
        benchmark.push_benchmark_to_hub(built, "org/mine", private=True, api=api)
    with pytest.raises(PermissionError, match="exists and is public"):
        benchmark.push_benchmark_to_hub(
            built, "org/bench", private=True, allow_gated_in_private_repo=True, api=FakeHfApi({"org/bench"})
        )
    benchmark.push_benchmark_to_hub(built, "org/mine", private=True, allow_gated_in_private_repo=True, api=api)
    assert api.uploads[-1][2] is True and len(api.uploads[-1][3]) == 3 + len(KEYS)
    with pytest.raises(ValueError, match="not a UniMed shard build.*unimedclip benchmark"):
        push_dataset_to_hub(built, "org/mine", private=True, allow_gated_in_private_repo=True, api=api)

    # A file altered after the build is never uploaded.
    shard = next((open_build / "data" / "PCAM").glob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ValueError, match="missing or altered: data/PCAM/"):
        benchmark.push_benchmark_to_hub(open_build, "org/bench", api=api)
    assert len(api.uploads) == 2


def test_decoding_is_the_same_for_files_and_bytes(tmp_path):
    """16-bit images scaled by their range, 8-bit ones untouched: the same pixels from a file and from its bytes."""
    from unimedclip.evaluation.readers import decode_image

    deep = np.random.default_rng(0).integers(300, 4000, (12, 10)).astype(np.uint16)
    for array, name in ((deep, "deep.png"), (np.full((5, 6, 3), 7, np.uint8), "rgb.png")):
        Image.fromarray(array).save(tmp_path / name)
        from_file, from_bytes = decode_image(tmp_path / name), decode_image((tmp_path / name).read_bytes())
        assert from_file.mode == from_bytes.mode and np.array_equal(np.asarray(from_file), np.asarray(from_bytes))
    assert np.asarray(decode_image((tmp_path / "deep.png").read_bytes())).max() == 255
    with pytest.raises(ValueError, match="Cannot read the image bytes"):
        decode_image(b"not an image")
    buffer = io.BytesIO()
    Image.new("1", (13_000, 13_000)).save(buffer, "PNG")  # a few KB, 169 million pixels: PIL only warns
    with pytest.raises(ValueError, match="more than the"), pytest.warns(Image.DecompressionBombWarning):
        decode_image(buffer.getvalue())
