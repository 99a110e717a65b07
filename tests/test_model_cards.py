"""Model cards rendered from a model directory and evaluation results, and publishing through a fake HfApi."""

import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.utils import filter_repo_objects

from modeling_unimedclip import UniMedCLIPModel
from unimedclip.evaluation import eval_results, summarize
from unimedclip.evaluation.readers import BENCHMARK_REPO
from unimedclip.release import hub as hub_module
from unimedclip.release.hub import publish_model
from unimedclip.release.model_card import Architecture, model_card_for_directory, released_cards
from unimedclip.release.model_card import main as model_card_main
from unimedclip.release.model_files import count_parameters
from unimedclip.release.publish import main as publish_main
from unimedclip.variants import VARIANTS

MODEL_CARDS = Path(__file__).parents[1] / "model_cards"
RESULTS = {
    "chexpert-5x200": {"modality": "xray", "metric": "accuracy", "value": 71.234, "images": 1000},
    "acl_mri": {"modality": "mri", "metric": "auc", "value": 55.5, "images": 120},
    "CT_axial": {"modality": "ct", "metric": "accuracy", "value": 83.0, "images": 400},
}
for _key, _result in RESULTS.items():
    _result["hub_dataset"] = [BENCHMARK_REPO, _key]


def write_results(path: Path) -> Path:
    """A results.json as evaluate_zero_shot.py writes it, for three datasets."""
    report = {
        "config": {"prompts": "/somewhere/unimedclip/evaluation/prompts/unimed.json"},
        "results": RESULTS,
        "skipped": {"PCAM": "missing PCam_Test_preprocessed/"},
        "summary": summarize(RESULTS),
        "model_index": [asdict(result) for result in eval_results(RESULTS)],
    }
    path.write_text(json.dumps(report))
    return path


@pytest.fixture
def model_copy(model_dir, tmp_path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


def test_card_metadata_and_tables_come_from_the_results(model_copy, tmp_path):
    card = model_card_for_directory(
        model_copy, repo_id="org/unimed-clip-tiny", results_path=write_results(tmp_path / "results.json")
    )
    card.save(model_copy / "README.md")
    loaded = ModelCard.load(model_copy / "README.md")
    data = loaded.data
    assert data.library_name == "transformers" and data.pipeline_tag == "zero-shot-image-classification"
    assert data.license == "cc-by-nc-4.0" and "MetaCLIP" in loaded.text
    assert {"medical", "x-ray", "ct", "mri", "ultrasound", "histopathology", "fundus", "zero-shot"} <= set(data.tags)
    assert (
        data.base_model is None and data.datasets is None
    )  # a tiny custom shape was not initialised from MetaCLIP or BiomedBERT
    assert data.widget and all("candidate_labels" in example for example in data.widget)
    index = {result.dataset_name: result for result in data.eval_results}
    assert set(index) == set(RESULTS)
    assert {(r.dataset_type, r.dataset_config) for r in data.eval_results} == {(BENCHMARK_REPO, k) for k in RESULTS}
    assert (index["chexpert-5x200"].metric_type, index["chexpert-5x200"].metric_value) == ("accuracy", 71.23)
    assert (index["acl_mri"].metric_type, index["acl_mri"].metric_value) == ("roc_auc", 55.5)
    assert data.model_name == "unimed-clip-tiny"

    text = loaded.text
    assert "| chexpert-5x200 | X-ray | accuracy | 71.23 | 1000 |" in text
    assert "| acl_mri | MRI | ROC AUC | 55.50 | 120 |" in text
    assert "| **all 3 datasets** | **69.91** |" in text  # (71.234 + 55.5 + 83.0) / 3
    assert "Not evaluated (data missing): PCAM." in text and "prompt set `unimed.json`" in text
    assert "pending" not in text
    parameters = UniMedCLIPModel.from_pretrained(model_copy).num_parameters()
    assert f"| parameters | {parameters:,} |" in text
    assert 'model="org/unimed-clip-tiny"' in text and "trust_remote_code=True" in text


def test_without_results_the_card_invents_no_numbers(model_copy):
    card = model_card_for_directory(model_copy, repo_id="org/unimed-clip-tiny")
    assert "model-index" not in str(card) and not card.data.eval_results
    assert "Evaluation of these weights with `evaluate_zero_shot.py` is pending" in card.text
    evaluation = card.text[card.text.index("## Evaluation") : card.text.index("## Intended use")]
    decimals = set(re.findall(r"\b\d+\.\d+\b", evaluation))
    assert decimals == {f"{value:.2f}" for v in VARIANTS.values() for value in v.paper_results.values()}
    assert "reported by the authors" in card.text


def test_training_settings_and_origin_are_shown(model_copy):
    card = model_card_for_directory(
        model_copy, repo_id="org/tiny", training={"global batch size": 2048, "epochs": 10}, datasets=["org/unimed"]
    )
    assert "| global batch size | 2048 |" in card.text and "trained with this project's `train.py`" in card.text
    assert card.data.datasets == ["org/unimed"]  # the original sources only for converted original weights
    converted = model_card_for_directory(model_copy, repo_id="org/tiny", converted_from="UzairK/unimed-clip-vit-b16")
    assert "converted from the original release" in converted.text and "This checkpoint" not in converted.text
    assert converted.data.datasets == ["axiong/pmc_oa"]


def test_architecture_of_released_variants_and_sharded_directories(model_copy, tmp_path):
    b16 = Architecture.from_variant("b16")
    assert (b16.variant, b16.parameters, b16.image_size, b16.patch_size) == ("b16", 195_903_489, 224, 16)
    large = Architecture.from_variant("l14-336-large")
    assert (large.variant, large.parameters, large.image_size) == ("l14-336-large", 639_991_809, 336)
    assert Architecture.from_directory(model_copy).variant is None
    cards = released_cards()
    assert cards["unimed-clip-vit-b16.md"].data.base_model[0] == "facebook/metaclip-b16-400m"
    assert cards["unimed-clip-vit-b16.md"].data.base_model_relation == "finetune"  # two bases are not a merge
    assert cards["unimed-clip-vit-l14-336-large.md"].data.base_model == [
        "facebook/metaclip-l14-400m",
        "microsoft/BiomedNLP-BiomedBERT-large-uncased-abstract",
    ]

    model = UniMedCLIPModel.from_pretrained(model_copy)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert count_parameters(tmp_path / "sharded") == count_parameters(model_copy) == model.num_parameters()


def test_released_cards_are_up_to_date():
    """model_cards/*.md must be what `unimedclip card --released model_cards` writes."""
    cards = released_cards()
    assert sorted(cards) == sorted(path.name for path in MODEL_CARDS.glob("unimed-clip-*.md"))
    for filename, card in cards.items():
        assert (MODEL_CARDS / filename).read_text(encoding="utf-8") == str(card), f"regenerate {filename}"
        assert "evaluation" in card.text.lower() and "pending" in card.text and not card.data.eval_results
    assert "| parameters | 414,365,185 |" in cards["unimed-clip-vit-l14-336-base.md"].text


class FakeHfApi:
    """Records Hub calls, and the files (with README.md's text) an upload would send, honouring its patterns."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        folder = Path(folder_path)
        files = [path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()]
        uploaded = sorted(filter_repo_objects(files, ignore_patterns=ignore_patterns))
        readme = (folder / "README.md").read_text() if "README.md" in uploaded else None
        self.calls.append(("upload_folder", repo_id, kwargs["repo_type"], uploaded, readme))
        return f"https://huggingface.co/{repo_id}/commit/0123"


def test_publish_model_uploads_weights_code_and_our_card(model_copy):
    card = model_card_for_directory(model_copy, repo_id="org/unimed-clip-tiny")
    card.save(model_copy / "README.md")
    (model_copy / "epoch_10.pt").write_bytes(b"training checkpoint")
    api = FakeHfApi()
    url = publish_model(model_copy, "org/unimed-clip-tiny", api=api)

    assert url.endswith("commit/0123")
    assert api.calls[0] == (
        "create_repo",
        "org/unimed-clip-tiny",
        {"repo_type": "model", "private": None, "exist_ok": True},
    )
    _, repo_id, repo_type, uploaded, readme = api.calls[1]
    assert (repo_id, repo_type) == ("org/unimed-clip-tiny", "model")
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "README.md"} <= set(
        uploaded
    )
    assert {"configuration_unimedclip.py", "modeling_unimedclip.py", "processing_unimedclip.py"} <= set(uploaded)
    assert "dicom_unimedclip.py" in uploaded  # imported by the image processor's remote code
    assert "epoch_10.pt" not in uploaded
    assert readme == str(card)


def test_incomplete_model_directory_is_refused_with_everything_missing(model_copy):
    for name in ("tokenizer.json", "dicom_unimedclip.py", "model.safetensors"):
        (model_copy / name).unlink()
    api = FakeHfApi()
    with pytest.raises(FileNotFoundError) as error:
        publish_model(model_copy, "org/tiny", api=api)
    message = str(error.value)
    for expected in (
        "model.safetensors",
        "tokenizer.json or vocab.txt",
        "dicom_unimedclip.py (remote code)",
        "README.md",
    ):
        assert expected in message
    assert api.calls == []


def test_generic_card_is_refused(model_copy):
    (model_copy / "README.md").write_text(
        "---\nlibrary_name: transformers\ntags: []\n---\n\n# Model Card for Model ID\n"
    )
    with pytest.raises(FileNotFoundError, match="README.md with metadata"):
        publish_model(model_copy, "org/tiny", api=FakeHfApi())


def test_command_lines_render_and_publish(model_copy, tmp_path, monkeypatch, capsys):
    api = FakeHfApi()
    monkeypatch.setattr(hub_module, "HfApi", lambda: api)
    with pytest.raises(SystemExit, match="README.md with metadata"):
        publish_main(["model", str(model_copy), "--repo-id", "org/tiny"])
    training = tmp_path / "training.json"
    training.write_text(json.dumps({"epochs": 10}))
    model_card_main(
        [
            "--model-dir",
            str(model_copy),
            "--repo-id",
            "org/tiny",
            "--results",
            str(write_results(tmp_path / "r.json")),
            "--training",
            str(training),
        ]
    )
    assert ModelCard.load(model_copy / "README.md").data.eval_results
    publish_main(["model", str(model_copy), "--repo-id", "org/tiny", "--private"])
    assert api.calls[0][2]["private"] is True and "commit/0123" in capsys.readouterr().out
