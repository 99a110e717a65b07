"""Every code block of the README and of the released model cards runs, so that the documentation cannot rot.

The blocks run in a sandbox folder laid out like the Hub: `unimed-clip/unimed-clip-vit-b16`,
`microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract`, `facebook/metaclip-b16-400m`, the baselines `vinid/plip` and
`microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`, and `unimed-clip/UniMed` are local directories there
holding tiny models and a tiny UniMed build, which `from_pretrained` and `load_dataset` find before the Hub. The
Python blocks of each `## ` section run together in a fresh interpreter, as a user would type them: once with this
package installed but not imported, and, unless a block imports the project, once where the package cannot be
imported at all (the model card's promise to users of `trust_remote_code=True`). Shell commands run in this process
through the same entry points the shell would reach, with a fake `HfApi` for uploads; the only changes are the flags
in `SCALE_DOWN`, which shrink a paper-sized training run to two tiny steps.
"""

import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel
import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import TINY_VISION, images
from reference import open_clip_model, original_checkpoint
from test_baselines import save_tiny_clip, save_tiny_open_clip
from test_dataset_build import SETTINGS, make_raw_sources
from test_medical import write_dicom
from transformers import CLIPConfig, CLIPModel

import unimedclip.release.hub
from dataset_scripts.build import build_registered
from dataset_scripts.synthetic import write_synthetic_rocov2
from modeling_unimedclip import UniMedCLIPForImageClassification, UniMedCLIPProcessor
from unimedclip import cli
from unimedclip.release.dataset_card import render_card

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Flags appended to commands whose defaults are a paper-sized run.
SCALE_DOWN = {
    "train.py": [
        "--batch-size", "4", "--micro-batch-size", "4", "--max-steps", "2", "--warmup-steps", "1",
        "--num-workers", "0", "--mixed-precision", "no", "--report-to", "none",
    ],
    "finetune.py": [
        "--batch-size", "4", "--max-steps", "2", "--num-workers", "0", "--mixed-precision", "no",
        "--report-to", "none",
    ],
}  # fmt: skip
# Covered elsewhere: `make test` is what CI runs, `make demo` is tested in test_scripts.py.
NOT_RUN_HERE = {"make"}
CHEST_XRAYS = 16


MODEL_CARD = ROOT / "model_cards" / "unimed-clip-vit-b16.md"
PROJECT_PACKAGES = ("modeling_unimedclip", "unimedclip", "dataset_scripts")
# Run before a section's blocks in the "not installed" mode: the project cannot be imported, as on a machine that has
# only transformers and the model repository.
HIDE_PROJECT = textwrap.dedent(
    f"""
    import importlib.abc, sys

    class HideProject(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {PROJECT_PACKAGES!r}:
                raise ImportError(f"{{name}} is not installed here")

    sys.meta_path.insert(0, HideProject())
    """
)
# Printed after a section's blocks, for the assertions below.
REPORT = textwrap.dedent(
    """
    import json as _json
    _found = {name: value for name, value in globals().items() if not name.startswith("_")}
    _report = {
        "predictions": len(_found["predictions"]) if "predictions" in _found else None,
        "probabilities": list(_found["probabilities"].shape) if "probabilities" in _found else None,
        "ct_inputs": list(_found["ct_inputs"].pixel_values.shape) if "ct_inputs" in _found else None,
        "frame_inputs": list(_found["frame_inputs"].pixel_values.shape) if "frame_inputs" in _found else None,
        "inputs": list(_found["inputs"].pixel_values.shape) if "inputs" in _found else None,
        "sample_modality": _found["sample"]["json"]["modality"] if "sample" in _found else None,
        "batch": list(_found["batch"]["pixel_values"].shape) if "batch" in _found else None,
        "model_module": type(_found["model"]).__module__.split(".")[0] if "model" in _found else None,
        "embedding": list(_found["embedding"].shape) if "embedding" in _found else None,
    }
    print("REPORT " + _json.dumps(_report))
    """
)


def code_blocks(language: str, document: Path = README) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", document.read_text(), flags=re.DOTALL | re.MULTILINE)


def python_sections(document: Path, hide_project: bool = False) -> dict[str, str]:
    """The Python blocks of each `## ` section, joined: the code a user types in one interpreter. With
    `hide_project`, only the blocks that do not import the project (which need it installed)."""
    sections: dict[str, str] = {}
    for part in re.split(r"^## ", document.read_text(), flags=re.MULTILINE)[1:]:
        title = part.splitlines()[0].strip()
        blocks = re.findall(r"^```python\n(.*?)^```", part, flags=re.DOTALL | re.MULTILINE)
        if hide_project:
            blocks = [
                block for block in blocks if not re.search(r"^\s*(from|import) (modeling_)?unimedclip", block, re.M)
            ]
        if blocks:
            sections[title] = "\n".join(blocks)
    return sections


def run_fresh(code: str, sandbox: Path, hide_project: bool) -> dict:
    """Run `code` in a new interpreter in the sandbox, as a user would; returns what REPORT prints."""
    script = (HIDE_PROJECT if hide_project else "") + code + REPORT
    environment = {**os.environ, "HOME": str(sandbox), "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(sandbox / "mc")}
    environment["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=sandbox, env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{'not installed' if hide_project else 'installed'}:\n{result.stderr[-4000:]}"
    return json.loads(next(line for line in result.stdout.splitlines() if line.startswith("REPORT "))[7:])


def shell_commands() -> list[list[str]]:
    commands = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] not in NOT_RUN_HERE:
                commands.append(words)
    return commands


class FakeHfApi:
    uploads: list[tuple[str, str, list[str]]] = []

    def create_repo(self, repo_id, **kwargs):
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        FakeHfApi.uploads.append((repo_id, kwargs.get("repo_type", "model"), files))
        return f"https://huggingface.co/{repo_id}/commit/0"

    def repo_info(self, repo_id, **kwargs):
        raise FileNotFoundError(repo_id)


def tiny_metaclip(path: Path) -> None:
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={**TINY_VISION, "hidden_act": "quick_gelu"},
        projection_dim=24,
    )
    CLIPModel(config).save_pretrained(path)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, model_dir, tiny_bert_dir) -> Path:
    """The files the README's examples name, as tiny stand-ins."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(model_dir, root / "unimed-clip" / "unimed-clip-vit-b16")
    bert = root / "microsoft" / "BiomedNLP-BiomedBERT-base-uncased-abstract"
    shutil.copytree(tiny_bert_dir, bert)
    tiny_metaclip(root / "facebook" / "metaclip-b16-400m")
    save_tiny_clip(root / "vinid" / "plip")  # PLIP: a transformers CLIPModel
    save_tiny_open_clip(root / "microsoft" / "BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", bert)  # open_clip
    torch.save(
        original_checkpoint(open_clip_model(bert, image_size=32, patch_size=16)), root / "unimed-clip-vit-b16.pt"
    )

    images(1)[0].save(root / "chest_xray.png")
    rng = np.random.default_rng(0)
    write_dicom(root / "chest_ct.dcm", rng.integers(0, 2000, (24, 20)))
    write_dicom(root / "cine.dcm", rng.integers(0, 2000, (3, 24, 20)))
    nibabel.save(nibabel.Nifti1Image(rng.normal(size=(20, 24, 8)).astype(np.float32), np.eye(4)), root / "head.nii.gz")

    synthetic_raw, _, _ = write_synthetic_rocov2(root / "synthetic", train_per_class=4, heldout_per_class=1)
    synthetic_raw.rename(root / "ROCOv2")
    unimed = root / "unimed-clip" / "UniMed"
    for source, raw in make_raw_sources(root / "raw").items():
        build_registered(source, raw.root, raw.annotations, unimed, SETTINGS)
    render_card(unimed)

    with open(root / "chest_xrays.csv", "w") as file:  # 16 images: one per shard of the README's --shard-multiple
        file.write("path,label\n")
        for index, image in enumerate(images(CHEST_XRAYS)):
            image.save(root / f"xray_{index}.png")
            file.write(f"xray_{index}.png,{['pneumonia', 'no finding'][index % 2]}\n")
    # The fine-tuning section's classifier (a Hub repository in the README), a head on the tiny model's tower.
    classifier_dir = root / "my-org" / "unimed-clip-chest-xray"
    labels = ["no finding", "pneumonia"]
    UniMedCLIPForImageClassification.from_pretrained(
        model_dir, id2label=dict(enumerate(labels)), label2id={label: index for index, label in enumerate(labels)}
    ).save_pretrained(classifier_dir)
    UniMedCLIPProcessor.from_pretrained(model_dir).save_pretrained(classifier_dir)
    for folder in ("lung_aca", "lung_n", "lung_scc"):
        (root / "unimed-eval" / "LC25000_test" / folder).mkdir(parents=True)
        for index, image in enumerate(images(2)):
            image.save(root / "unimed-eval" / "LC25000_test" / folder / f"{index}.png")
    return root


def run_command(words: list[str]) -> None:
    """What the shell would run for `words`, in this process."""
    if words[:2] == ["accelerate", "launch"]:
        script = next(word for word in words if word.endswith(".py"))
        words = ["python", *words[words.index(script) :]]
    if words[0] == "unimedclip":
        assert cli.main(words[1:]) == 0
        return
    assert words[0] == "python", f"The README runs {words[0]!r}; teach test_readme.py how to run it."
    if words[1] == "-m":
        module, arguments = words[2], words[3:]
        sys.argv = [module, *arguments]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script, arguments = words[1], words[2:] + SCALE_DOWN.get(words[1], [])
        sys.argv = [script, *arguments]
        runpy.run_path(str(ROOT / script), run_name="__main__")


@pytest.mark.parametrize("hide_project", [False, True], ids=["installed-not-imported", "not-installed"])
def test_readme_python_runs_in_a_fresh_interpreter(sandbox, hide_project):
    sections = python_sections(README, hide_project)
    assert {"Using the model", "The UniMed dataset"} <= set(sections)
    reports = {title: run_fresh(code, sandbox, hide_project) for title, code in sections.items()}
    model = reports["Using the model"]
    assert model["predictions"] == 2 and model["probabilities"] == [1, 2]
    assert model["ct_inputs"] == model["frame_inputs"] == [1, 3, 32, 32]
    # The remote code from the model repository, never this package, even where it is installed.
    assert model["model_module"] == "transformers_modules"
    assert reports["The UniMed dataset"]["sample_modality"] == "xray"
    assert reports["Fine-tuning: a classifier of your own labelled images"]["predictions"] == 2
    if not hide_project:
        assert model["embedding"] == [1, 24] and reports["The UniMed dataset"]["batch"][0] == 4


@pytest.mark.parametrize("hide_project", [False, True], ids=["installed-not-imported", "not-installed"])
def test_model_card_python_runs_in_a_fresh_interpreter(sandbox, hide_project):
    sections = python_sections(MODEL_CARD)
    assert "How to use" in sections
    report = run_fresh(sections["How to use"], sandbox, hide_project)
    assert report["probabilities"] == [1, 2] and report["inputs"] == [1, 3, 32, 32]


def test_readme_commands_run(sandbox, monkeypatch):
    monkeypatch.chdir(sandbox)
    monkeypatch.setenv("HOME", str(sandbox))  # caches the examples write
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(unimedclip.release.hub, "HfApi", FakeHfApi)

    commands = shell_commands()
    assert {words[0] for words in commands} == {"python", "unimedclip", "accelerate"}
    for words in commands:
        try:
            run_command(words)
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)

    assert (sandbox / "unimed-clip-vit-b16" / "README.md").is_file()
    assert json.loads((sandbox / "UniMed" / "manifest.json").read_text())["shards"]
    assert len((sandbox / "captions.jsonl").read_text().splitlines()) == CHEST_XRAYS
    own = json.loads((sandbox / "UniMed" / "manifest.json").read_text())["sources"]["my_chest_xrays"]
    assert own["samples"] == CHEST_XRAYS and own["modalities"] == {"xray": CHEST_XRAYS}
    assert (sandbox / "runs" / "b16" / "final" / "model.safetensors").is_file()
    assert json.loads((sandbox / "runs" / "chest-xray" / "final" / "config.json").read_text())["label2id"] == {
        "no finding": 0,
        "pneumonia": 1,
    }
    assert ("my-org/unimed-clip-chest-xray", "model") in [upload[:2] for upload in FakeHfApi.uploads]
    assert "LC25000_lung" in json.loads((sandbox / "results" / "results.json").read_text())["results"]
    assert FakeHfApi.uploads[-1][:2] == ("unimed-clip/unimed-clip-vit-b16", "model")
    comparison = json.loads((sandbox / "comparison" / "comparison.json").read_text())
    assert comparison["models"] == [
        "unimed-clip-vit-b16",
        "plip",
        "BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    ]
    assert "LC25000_lung" in comparison["datasets"]
    assert "### Compared with other models" in (sandbox / "unimed-clip-vit-b16" / "README.md").read_text()
