"""The zero-shot evaluator: loaders for every catalog layout, metrics by hand, caching, retrieval, linear probes,
the CLI's outputs and the model-index round trip."""

import csv
import json
import re
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import LABELS, labelled_images
from huggingface_hub import ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image
from sklearn.linear_model import LogisticRegression

from modeling_unimedclip import UniMedCLIPModel, UniMedCLIPProcessor, UniMedCLIPVisionModelWithProjection
from unimedclip.evaluation import (
    DEFAULT_PROMPTS,
    Evaluator,
    catalog_dataset,
    csv_dataset,
    eval_results,
    hf_dataset,
    image_folder_dataset,
    load_catalog,
    retrieval_recalls,
)
from unimedclip.evaluation import command as evaluate_command
from unimedclip.evaluation.evaluator import METRIC_MODULE, few_shot_accuracy
from unimedclip.evaluation.readers import BENCHMARK_REPO
from unimedclip.inference import zero_shot as zero_shot_module

PER_CLASS = 3


def write_image(path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(path)


PATH_KEYS = ("root", "file", "image_root")


def materialize(entry: dict, root, per_class: int = PER_CLASS, layout: int = -1) -> None:
    """Write a tiny dataset laid out as a catalog entry's loader reads it: `per_class` images per class. A path the
    catalog gives in several layouts is written in the `layout`-th (by default the last)."""
    loader, classes = entry["loader"], entry["classes"]
    loader = {
        key: value[layout] if isinstance(value, list) and key in PATH_KEYS else value for key, value in loader.items()
    }
    kind = loader["type"]
    label_cells = {index: value for value, index in reversed(list((loader.get("label_values") or {}).items()))}
    items = [(c, j, label_cells.get(c, str(c))) for c in range(len(classes)) for j in range(per_class)]
    seed = iter(range(10_000))
    if kind == "folders":
        extension = loader.get("extensions", [".png"])[0]
        for c, j, _ in items:
            write_image(root / loader["root"] / loader["class_folders"][c] / f"{j}{extension}", next(seed))
        return
    if kind == "filename_label":
        for c, j, cell in items:
            name = f"{c}{j:03d}_{cell}{loader.get('extensions', ['.png'])[0]}"
            assert re.search(loader["pattern"], name)["label"] == cell, (loader["pattern"], name)
            write_image(root / loader["root"] / name, next(seed))
        return

    rows = []
    for c, j, cell in items:
        path_cell = f"img_{c}_{j}.png"
        image_path = loader.get("path_template") and loader["path_template"].format(path=path_cell, label=cell)
        write_image(root / loader["image_root"] / (image_path or path_cell), next(seed))
        row = {loader["path_column"]: path_cell}
        if kind == "csv":
            row[loader["label_column"]] = cell
        elif kind == "csv_one_hot":
            row.update({name: float(k == c) for k, name in enumerate(loader["label_columns"])})
        else:
            row[loader["category_column"]] = repr([classes[c] if not label_cells else cell, "other finding"])
        row.update(loader.get("filter") or {})
        rows.append(row)
    for column, value in (loader.get("filter") or {}).items():  # a row the filter must drop
        rows.append({**rows[0], column: f"not-{value}", loader["path_column"]: "missing.png"})
    _write_csv(root / loader["file"], rows, loader.get("header", True), loader.get("index_column", False))


def _write_csv(path, rows: list[dict], header: bool, index_column: bool) -> None:
    positions = [key for key in rows[0] if isinstance(key, int)]
    width = max(positions, default=-1) + 1
    names = [f"column{i}" for i in range(width)] + [key for key in rows[0] if isinstance(key, str)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(([""] if index_column else []) + names)
        for number, row in enumerate(rows):
            cells = [row.get(i, row.get(name, "")) for i, name in enumerate(names)]
            writer.writerow(([number] if index_column else []) + cells)


LAYOUTS = {
    "rsna-like": {
        "modality": "xray",
        "metric": "accuracy",
        "classes": ["normal", "pneumonia"],
        "loader": {
            "type": "csv",
            "file": "rsna.csv",
            "image_root": "rsna",
            "path_column": 1,
            "label_column": 2,
            "label_values": None,
            "filter": None,
            "index_column": False,
            "header": False,
            "path_template": None,
        },
    },
    "ct-like": {
        "modality": "ct",
        "metric": "accuracy",
        "classes": ["liver", "spleen", "heart"],
        "loader": {
            "type": "csv",
            "file": "organs/annotations.csv",
            "image_root": "organs",
            "path_column": 0,
            "label_column": 2,
            "label_values": None,
            "filter": {"split": "test"},
            "index_column": False,
            "header": True,
            "path_template": None,
        },
    },
    "bach-like": {
        "modality": "pathology",
        "metric": "accuracy",
        "classes": ["benign", "invasive"],
        "loader": {
            "type": "csv",
            "file": "BACH/truth.csv",
            "image_root": "BACH",
            "path_column": 0,
            "label_column": 1,
            "label_values": {"Benign": 0, "Invasive": 1},
            "filter": None,
            "index_column": False,
            "header": True,
            "path_template": "{label}/{path}",
        },
    },
    "acl-like": {
        "modality": "mri",
        "metric": "auc",
        "classes": ["no", "yes"],
        "loader": {
            "type": "csv",
            "file": "acl.csv",
            "image_root": "acl",
            "path_column": 0,
            "label_column": 1,
            "label_values": {"no": 0, "yes": 1},
            "filter": None,
            "index_column": True,
            "header": True,
            "path_template": None,
        },
    },
    "chexpert-like": {
        "modality": "xray",
        "metric": "accuracy",
        "classes": ["Edema", "Effusion"],
        "loader": {
            "type": "csv_one_hot",
            "file": "chexpert.csv",
            "image_root": "",
            "path_column": "imgpath",
            "label_columns": ["Edema", "Effusion"],
            "index_column": True,
            "header": True,
        },
    },
    "retina-like": {
        "modality": "fundus",
        "metric": "auc",
        "classes": ["no glaucoma", "glaucoma"],
        "loader": {
            "type": "csv_category_list",
            "file": "refuge.csv",
            "image_root": "",
            "path_column": "image",
            "category_column": "categories",
            "label_values": {"no glaucoma": 0, "glaucoma": 1},
            "index_column": True,
            "header": True,
        },
    },
    "folders-like": {
        "modality": "pathology",
        "metric": "accuracy",
        "classes": ["aca", "benign"],
        "loader": {"type": "folders", "root": "lc", "class_folders": ["colon_aca", "colon_n"], "extensions": [".png"]},
    },
    "pcam-like": {
        "modality": "pathology",
        "metric": "accuracy",
        "classes": ["normal", "tumour"],
        "loader": {
            "type": "filename_label",
            "root": "pcam",
            "pattern": r"_(?P<label>[01])\.png$",
            "label_values": {"0": 0, "1": 1},
            "extensions": [".png"],
        },
    },
}


@pytest.mark.parametrize("key", sorted(LAYOUTS))
def test_every_loader_layout(key, tmp_path):
    materialize(LAYOUTS[key], tmp_path)
    dataset = catalog_dataset(key, LAYOUTS[key], tmp_path)
    assert len(dataset.samples) == PER_CLASS * len(dataset.classes)
    assert sorted(s.label for s in dataset.samples) == sorted(c for c in range(len(dataset.classes)) for _ in "abc")
    assert all(s.image.is_file() for s in dataset.samples)


def test_the_catalog_describes_readable_layouts(tmp_path):
    catalog = load_catalog()
    assert len(catalog) == 21
    for key, entry in catalog.items():
        materialize(entry, tmp_path / key, per_class=1)
        dataset = catalog_dataset(key, entry, tmp_path / key)
        assert sorted(s.label for s in dataset.samples) == list(range(len(entry["classes"]))), key


def test_catalog_and_shipped_prompts():
    catalog, prompts = load_catalog(), json.loads(DEFAULT_PROMPTS.read_text())
    auc = {key for key, entry in catalog.items() if entry["metric"] == "auc"}
    assert auc == {"acl_mri", "meniscal_mri", "thyroid_us", "breast_us", "refuge_retina"}
    assert Counter(entry["modality"] for entry in catalog.values()) == {
        "xray": 2,
        "ct": 3,
        "mri": 2,
        "ultrasound": 2,
        "fundus": 4,
        "pathology": 8,
    }
    assert len(catalog["skin_cancer"]["classes"]) == 16 and len(catalog["NCK_CRC"]["classes"]) == 8
    assert list(prompts) == list(catalog)
    for key, entry in catalog.items():
        assert list(prompts[key]) == entry["classes"], key
        for name, texts in prompts[key].items():
            assert 4 <= len(texts) <= 10 and len(set(texts)) == len(texts), (key, name)
            assert all(text.strip() for text in texts), (key, name)


def test_missing_data_and_bad_labels_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="rsna.csv does not exist"):
        catalog_dataset("rsna-like", LAYOUTS["rsna-like"], tmp_path)
    materialize(LAYOUTS["acl-like"], tmp_path)
    wrong = json.loads(json.dumps(LAYOUTS["acl-like"]))
    wrong["loader"]["label_values"] = {"no": 0}
    with pytest.raises(ValueError, match="label 'yes' is not one of \\['no'\\]"):
        catalog_dataset("acl-like", wrong, tmp_path)


def test_generic_loaders(tmp_path):
    for c, name in enumerate(["effusion", "normal"]):
        for j in range(2):
            write_image(tmp_path / "folder" / name / f"{j}.png", 10 * c + j)
    folder = image_folder_dataset(tmp_path / "folder")
    assert folder.classes == ["effusion", "normal"] and [s.label for s in folder.samples] == [0, 0, 1, 1]

    with open(tmp_path / "folder" / "labels.csv", "w") as handle:
        handle.write("path,label\neffusion/0.png,effusion\nnormal/1.png,normal\n")
    table = csv_dataset(tmp_path / "folder" / "labels.csv")
    assert table.classes == ["effusion", "normal"] and table.samples[1].image == tmp_path / "folder/normal/1.png"

    for streaming in (False, True):
        hub_like = hf_dataset(str(tmp_path / "folder"), split="train", streaming=streaming)
        assert hub_like.classes == ["effusion", "normal"] and len(hub_like.samples) == 4
        assert isinstance(hub_like.samples[0].image, Image.Image)
        assert sorted(s.label for s in hub_like.samples) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="no column 'diagnosis'"):
        hf_dataset(str(tmp_path / "folder"), split="train", label_column="diagnosis")


def test_metrics_by_hand():
    import evaluate

    metric = evaluate.load(METRIC_MODULE)
    scores = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]
    # Predictions 0, 1, 0, 1 against 0, 1, 1, 0. AUC from the differences -0.8, 0.6, -0.2, 0.4: of the positive-
    # negative pairs (0.6, -0.8), (0.6, 0.4), (-0.2, -0.8), (-0.2, 0.4) three are ordered correctly.
    result = metric.compute(predictions=scores, references=[0, 1, 1, 0])
    assert result["accuracy"] == 50 and result["balanced_accuracy"] == 50 and result["auc"] == 75
    assert result["confusion_matrix"] == [[1, 1], [1, 1]]

    scores = [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]]
    result = metric.compute(predictions=scores, references=[0, 1, 2, 2, 0])
    # Predictions 0, 1, 1, 2, 2: accuracy 3/5; recalls 1/2, 1/1, 1/2 -> balanced 2/3.
    # One-vs-rest AUCs: class 0 scores (0.7, 0.3) vs (0.1, 0.2, 0.1): 1; class 1 0.6 vs (0.2, 0.5, 0.2, 0.3): 1;
    # class 2 (0.3, 0.7) vs (0.1, 0.3, 0.4): (0.5 + 0 + 0 ... ) -> pairs 0.3>0.1, 0.3=0.3 (half), 0.3<0.4,
    # 0.7 beats all three: (1 + 0.5 + 0 + 3) / 6 = 0.75. Macro mean (1 + 1 + 0.75) / 3.
    assert result["accuracy"] == pytest.approx(60)
    assert result["balanced_accuracy"] == pytest.approx(200 / 3)
    assert result["auc"] == pytest.approx(100 * 2.75 / 3)
    assert result["per_class_recall"] == [50, 100, 50] and result["support"] == [2, 1, 2]


def test_retrieval_recall_on_a_known_similarity():
    # Image i's caption is column i. Image 0: rank 1; image 1: its caption is third; image 2: second.
    similarity = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.2, 0.6], [0.1, 0.8, 0.7]])
    recalls = retrieval_recalls(similarity)
    assert recalls["image_to_text_R@1"] == pytest.approx(100 / 3)
    assert recalls["image_to_text_R@5"] == 100
    # Columns: caption 0 -> image 0 best; caption 1 -> image 2 best, then 1; caption 2 -> image 2 best.
    assert recalls["text_to_image_R@1"] == pytest.approx(200 / 3)


def test_retrieval_recall_at_5_and_10_count_ranks():
    """20 pairs whose correct caption sits at a chosen rank: a wrong ranking changes every recall."""
    ranks = [0, 0, 1, 2, 4, 4, 5, 7, 9, 9, 10, 12, 15, 19, 3, 6, 0, 8, 11, 2]  # 0-based rank of the right caption
    similarity = torch.zeros(20, 20)
    for image, rank in enumerate(ranks):
        others = [column for column in range(20) if column != image]
        order = others[:rank] + [image] + others[rank:]  # columns from most to least similar
        similarity[image, order] = torch.linspace(1.0, 0.0, 20)
    recalls = retrieval_recalls(similarity)
    for k in (1, 5, 10):
        assert recalls[f"image_to_text_R@{k}"] == pytest.approx(100 * sum(rank < k for rank in ranks) / 20)
    assert [recalls[f"image_to_text_R@{k}"] for k in (1, 5, 10)] == pytest.approx([15, 45, 75])


def test_linear_probe_on_separable_features():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 10)
    features = np.eye(3)[labels] * 5 + rng.normal(scale=0.1, size=(30, 3))
    result = few_shot_accuracy(features, labels, shots=2, seeds=[0, 1])
    assert result["mean"] == 100 and result["seeds"] == [0, 1]
    with pytest.raises(ValueError, match="more than 10 images in every class"):
        few_shot_accuracy(features, labels, shots=10, seeds=[0])


@pytest.fixture(scope="module")
def tiny(model_dir):
    return UniMedCLIPModel.from_pretrained(model_dir).eval(), UniMedCLIPProcessor.from_pretrained(model_dir)


def test_class_embeddings_are_cached_and_invalidated(tiny, tmp_path, monkeypatch):
    evaluator = Evaluator(*tiny, cache_dir=tmp_path)
    prompts = {"pneumonia": ["chest x-ray showing pneumonia"], "normal": ["normal chest x-ray", "no findings"]}
    first = evaluator.text_class_embeddings(prompts)
    assert len(list(tmp_path.glob("text-*.pt"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr("unimedclip.evaluation.evaluator.class_embeddings", fail)
    assert torch.equal(evaluator.text_class_embeddings(prompts), first)
    monkeypatch.setattr("unimedclip.evaluation.evaluator.class_embeddings", zero_shot_module.class_embeddings)
    changed = evaluator.text_class_embeddings({**prompts, "normal": ["normal chest x-ray"]})
    assert len(list(tmp_path.glob("text-*.pt"))) == 2 and not torch.equal(changed, first)


def test_class_without_prompts_is_a_clear_error(tiny, tmp_path):
    materialize(LAYOUTS["folders-like"], tmp_path)
    dataset = catalog_dataset("folders-like", LAYOUTS["folders-like"], tmp_path)
    with pytest.raises(ValueError, match=r"folders-like: no prompts for the class\(es\) \['benign'\]"):
        Evaluator(*tiny).zero_shot(dataset, {"aca": ["adenocarcinoma"]})


def test_cli_end_to_end(model_dir, tmp_path, tiny, monkeypatch, capsys):
    catalog = {key: LAYOUTS[key] for key in ("acl-like", "folders-like", "ct-like")}
    for key in ("acl-like", "folders-like"):
        materialize(LAYOUTS[key], tmp_path / "data")
    (tmp_path / "data" / "lc" / "colon_n" / "broken.png").write_bytes(b"not a png")
    prompts = {
        key: {name: [f"an image of {name}", f"{name} tissue"] for name in entry["classes"]}
        for key, entry in catalog.items()
    }
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    monkeypatch.setattr(evaluate_command, "load_catalog", lambda: catalog)

    report = evaluate_command.main(
        [
            "--model",
            str(model_dir),
            "--data-root",
            str(tmp_path / "data"),
            "--prompts",
            str(tmp_path / "prompts.json"),
            "--output",
            str(tmp_path / "out"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--num-workers",
            "0",
        ]
    )
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["results"] == json.loads(json.dumps(report["results"]))
    assert set(saved["results"]) == {"acl-like", "folders-like"}
    assert "ct-like" in saved["skipped"] and "annotations.csv does not exist" in saved["skipped"]["ct-like"]
    acl, folders = saved["results"]["acl-like"], saved["results"]["folders-like"]
    assert acl["value"] == acl["auc"] and folders["value"] == folders["accuracy"]
    assert (
        folders["unreadable"] == 1
        and folders["images"] == 6
        and folders["unreadable_examples"][0].endswith("broken.png")
    )
    assert saved["summary"]["average"] == pytest.approx((acl["value"] + folders["value"]) / 2)
    assert set(saved["summary"]["modalities"]) == {"mri", "pathology"}
    assert "| **mean (2 datasets)** |" in (tmp_path / "out" / "results.md").read_text()

    # The accuracy equals an independent computation: argmax of cosine similarity to prompt-mean embeddings.
    model, processor = tiny
    dataset = catalog_dataset("folders-like", LAYOUTS["folders-like"], tmp_path / "data")
    readable = [s for s in dataset.samples if s.image.name != "broken.png"]
    with torch.no_grad():
        outputs = model(
            **processor(text=sum(prompts["folders-like"].values(), []), images=[s.image for s in readable])
        )
    classes = torch.nn.functional.normalize(outputs.text_embeds.reshape(2, 2, -1).mean(1), dim=-1)
    predicted = (outputs.image_embeds @ classes.T).argmax(-1)
    expected = 100 * (predicted == torch.tensor([s.label for s in readable])).float().mean().item()
    assert folders["accuracy"] == pytest.approx(expected)

    # model-index round trip: the JSON's entries render into a card and parse back to the same numbers.
    card = ModelCardData(model_name="unimed-clip-tiny", eval_results=eval_results(saved["results"]))
    name, parsed = model_index_to_eval_results(card.to_dict()["model-index"])
    assert name == "unimed-clip-tiny"
    assert {(r.dataset_type, r.dataset_config, r.metric_type, r.metric_value) for r in parsed} == {
        (BENCHMARK_REPO, "acl-like", "roc_auc", round(acl["value"], 2)),
        (BENCHMARK_REPO, "folders-like", "accuracy", round(folders["value"], 2)),
    }
    assert saved["model_index"][0]["metric_value"] == round(acl["value"], 2)


def test_cli_retrieval_and_linear_probe(model_dir, tmp_path, capsys):
    rows, pairs = ["path,caption"], [image for label in LABELS for image in labelled_images(label, 4, 5)]
    for index, image in enumerate(pairs):
        image.save(tmp_path / f"{index}.png")
        rows.append(f"{index}.png,chest x-ray number {index}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    common = ["--model", str(model_dir), "--output", str(tmp_path / "out"), "--num-workers", "0"]
    report = evaluate_command.main([*common, "--task", "retrieval", "--csv", str(tmp_path / "pairs.csv")])
    recalls = report["results"]["retrieval"]
    # The same recalls from the full model's own forward pass, ranked here.
    model, processor = (
        UniMedCLIPModel.from_pretrained(model_dir).eval(),
        UniMedCLIPProcessor.from_pretrained(model_dir),
    )
    captions = [f"chest x-ray number {index}" for index in range(len(pairs))]
    with torch.no_grad():
        outputs = model(**processor(text=captions, images=[tmp_path / f"{i}.png" for i in range(len(pairs))]))
    similarity = outputs.image_embeds @ outputs.text_embeds.T
    rank = (similarity > similarity.diagonal()[:, None]).sum(1)
    assert recalls["pairs"] == len(pairs)
    assert recalls["image_to_text_R@1"] == pytest.approx(100 * (rank < 1).float().mean().item())
    assert recalls["image_to_text_R@5"] == pytest.approx(100 * (rank < 5).float().mean().item())

    for c, name in enumerate(["a", "b"]):
        for j in range(4):
            write_image(tmp_path / "folder" / name / f"{j}.png", 100 * c + j)
    report = evaluate_command.main(
        [
            *common,
            "--task",
            "linear-probe",
            "--image-folder",
            str(tmp_path / "folder"),
            "--shots",
            "1,2",
            "--seeds",
            "0,1",
        ]
    )
    probe = report["results"]["folder"]
    assert set(probe) == {"1", "2"} and probe["1"]["seeds"] == [0, 1]

    # An image-only task loads only the image tower; its probe equals one computed here on the full model's features.
    tower, _ = evaluate_command.load_model(str(model_dir), None, image_only=True)
    assert isinstance(tower, UniMedCLIPVisionModelWithProjection)
    model, processor = (
        UniMedCLIPModel.from_pretrained(model_dir).eval(),
        UniMedCLIPProcessor.from_pretrained(model_dir),
    )
    files = sorted((tmp_path / "folder").rglob("*.png"))
    labels = np.array([0 if file.parent.name == "a" else 1 for file in files])
    with torch.no_grad():
        features = model.get_image_features(pixel_values=processor(images=files).pixel_values).pooler_output
    features = torch.nn.functional.normalize(features, dim=-1).numpy()
    for shots in (1, 2):
        accuracies = []
        for seed in (0, 1):
            rng = np.random.default_rng(seed)
            train = np.concatenate([rng.choice(np.flatnonzero(labels == c), shots, replace=False) for c in (0, 1)])
            test = np.setdiff1d(np.arange(len(labels)), train)
            classifier = LogisticRegression(max_iter=1000).fit(features[train], labels[train])
            accuracies.append(100 * (classifier.predict(features[test]) == labels[test]).mean())
        assert probe[str(shots)]["mean"] == pytest.approx(np.mean(accuracies), abs=1e-6)


def test_cli_on_the_real_catalog_and_prompts(model_dir, tmp_path):
    catalog = load_catalog()
    for key in ("acl_mri", "PCAM", "five_retina", "rsna_pneumonia"):
        materialize(catalog[key], tmp_path / "data", per_class=2)  # PCam as the original archive has it, in uzair/
    assert catalog["PCAM"]["loader"]["root"][-1].startswith("uzair/")
    common = ["--model", str(model_dir), "--data-root", str(tmp_path / "data"), "--num-workers", "0"]
    keys = ["acl_mri", "PCAM", "five_retina", "rsna_pneumonia", "BACH"]
    report = evaluate_command.main([*common, "--output", str(tmp_path / "out"), "--datasets", *keys])
    assert set(report["results"]) == set(keys[:-1]) and set(report["skipped"]) == {"BACH"}
    assert report["results"]["acl_mri"]["metric"] == "auc" and report["results"]["PCAM"]["images"] == 4
    # RSNA: accuracy, as the paper reports it, and the AUC the original also computed.
    rsna = [entry for entry in report["model_index"] if entry["dataset_name"] == "rsna_pneumonia"]
    assert [(entry["metric_type"], entry["metric_value"]) for entry in rsna] == [
        ("accuracy", round(report["results"]["rsna_pneumonia"]["accuracy"], 2)),
        ("roc_auc", round(report["results"]["rsna_pneumonia"]["auc"], 2)),
    ]
    with pytest.raises(SystemExit, match="Unknown dataset"):
        evaluate_command.main([*common, "--datasets", "imagenet"])


def test_one_bad_dataset_never_costs_the_others_and_results_are_written_as_they_come(
    model_dir, tmp_path, monkeypatch, capsys
):
    """A CSV with wrong columns, a header-only CSV, an unknown label and a decompression bomb each used to abort the
    whole run, losing the datasets already evaluated."""
    catalog = {f"{name}-{key}": LAYOUTS[key] for name in ("good", "columns", "empty", "label") for key in ["ct-like"]}
    catalog["good-folders"] = LAYOUTS["folders-like"]
    for key, entry in catalog.items():
        catalog[key] = json.loads(json.dumps(entry).replace("organs", key))
        materialize(catalog[key], tmp_path / "data")
    (tmp_path / "data" / "columns-ct-like" / "annotations.csv").write_text("image,split\na.png,test\n")
    (tmp_path / "data" / "empty-ct-like" / "annotations.csv").write_text("path,x,label,split\n")
    unknown = (tmp_path / "data" / "label-ct-like" / "annotations.csv").read_text().replace(",0,test", ",9,test")
    (tmp_path / "data" / "label-ct-like" / "annotations.csv").write_text(unknown)
    bomb = tmp_path / "data" / "lc" / "colon_n" / "bomb.png"
    Image.new("1", (13_000, 13_000)).save(bomb)  # a few KB on disk, 169 million pixels decoded
    assert bomb.stat().st_size < 100_000
    prompts = {key: {name: [f"an image of {name}"] for name in entry["classes"]} for key, entry in catalog.items()}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    monkeypatch.setattr(evaluate_command, "load_catalog", lambda: catalog)
    written = []
    real_zero_shot = Evaluator.zero_shot

    def zero_shot_that_watches(self, dataset, prompts):
        # Every dataset evaluated so far is already on disk when the next one starts.
        results = tmp_path / "out" / "results.json"
        written.append(sorted(json.loads(results.read_text())["results"]) if results.is_file() else None)
        return real_zero_shot(self, dataset, prompts)

    monkeypatch.setattr(Evaluator, "zero_shot", zero_shot_that_watches)
    arguments = ["--model", str(model_dir), "--data-root", str(tmp_path / "data"), "--num-workers", "0"]
    arguments += ["--prompts", str(tmp_path / "prompts.json"), "--output", str(tmp_path / "out")]
    with pytest.raises(
        SystemExit, match=r"2 dataset\(s\) evaluated, 3 failed \(columns-ct-like, empty-ct-like, label"
    ):
        evaluate_command.main(arguments)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["results"]) == {"good-ct-like", "good-folders"}
    assert written == [None, ["good-ct-like"]]
    assert "annotations.csv: no column 2: a row has only 2 cells" in saved["failed"]["columns-ct-like"]
    assert "annotations.csv has no rows below its header" in saved["failed"]["empty-ct-like"]
    assert "labels [9] outside the 3 classes" in saved["failed"]["label-ct-like"]
    assert saved["results"]["good-folders"]["unreadable"] == 1  # the bomb, counted as unreadable, not decoded
    assert "Failed columns-ct-like" in capsys.readouterr().err


def test_evaluating_nothing_is_a_failure(model_dir, tmp_path):
    arguments = ["--model", str(model_dir), "--data-root", str(tmp_path / "nothing"), "--num-workers", "0"]
    with pytest.raises(SystemExit, match=r"0 dataset\(s\) evaluated, 0 failed \(none\), 21 missing"):
        evaluate_command.main([*arguments, "--output", str(tmp_path / "out")])
