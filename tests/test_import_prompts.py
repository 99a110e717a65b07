"""Importing the original prompt ensembles from a clone of the original repository, without running its code."""

import json

import pytest

from unimedclip.evaluation import import_prompts as import_prompts_module
from unimedclip.evaluation import load_catalog
from unimedclip.evaluation.import_prompts import import_prompts
from unimedclip.evaluation.import_prompts import main as import_main


def fake_constants(catalog: dict, skip: str | None = None, override: dict | None = None) -> str:
    """A constants.py laid out like the original's (module-level dict literals), with invented prompts and code
    that must never run."""
    lines = ["import module_that_does_not_exist", "raise SystemExit('executed!')"]
    written = set()
    for entry in catalog.values():
        variable = entry["original_prompts"]["variable"]
        if variable in written or variable == skip:
            continue
        written.add(variable)
        count = {"RSNA_CLASS_PROMPTS_webdataset": 3, "CHEXPERT_CLASS_PROMPTS_webdataset": 12}.get(variable, 4)
        value = {
            f"original {name}": [f"{variable} {name} prompt {i}" for i in range(count)] for name in entry["classes"]
        }
        lines.append(f"{variable} = {(override or {}).get(variable, repr(value))}")
    return "\n".join(lines) + "\n"


def test_import_the_original_protocol(tmp_path):
    catalog = load_catalog()
    (tmp_path / "constants.py").write_text(fake_constants(catalog))
    import_main(["--original-repo", str(tmp_path), "--output", str(tmp_path / "paper.json")])
    prompts = json.loads((tmp_path / "paper.json").read_text())
    assert list(prompts) == list(catalog)
    for key, entry in catalog.items():
        assert list(prompts[key]) == entry["classes"]  # mapped by position onto our class names
    assert prompts["rsna_pneumonia"]["pneumonia"] == ["RSNA_CLASS_PROMPTS_webdataset pneumonia prompt 0"]
    assert len(prompts["chexpert-5x200"]["edema"]) == 11
    assert prompts["CT_axial"] == prompts["CT_sagittal"] and len(prompts["PCAM"]["normal lymph node"]) == 4


@pytest.mark.parametrize(
    ("skip", "override", "match"),
    [
        ("PCAM", None, "defines no PCAM, the prompts of PCAM"),
        (None, {"BACH_prompts": "{'only one class': ['a']}"}, r"BACH: BACH_prompts has 1 classes"),
        (None, {"Osteo_prompts": "make_prompts()"}, "Osteo_prompts is not a plain literal"),
        (None, {"five_prompts": "['a', 'b']"}, "five_prompts is not a dict of prompt lists"),
    ],
)
def test_bad_original_definitions(tmp_path, skip, override, match):
    (tmp_path / "constants.py").write_text(fake_constants(load_catalog(), skip, override))
    with pytest.raises(ValueError, match=match):
        import_prompts(tmp_path)


def test_not_a_clone(tmp_path):
    with pytest.raises(FileNotFoundError, match="constants.py does not exist: is .* a clone of UniMed-CLIP"):
        import_prompts(tmp_path)


def test_catalog_entries_the_original_never_evaluated_are_left_out(tmp_path, monkeypatch):
    """Adding an evaluation dataset is one catalog entry: the importer must not need it to exist in the original."""
    catalog = load_catalog()
    (tmp_path / "constants.py").write_text(fake_constants(catalog))
    new = {"modality": "xray", "metric": "accuracy", "classes": ["a", "b"], "loader": {"type": "folders"}}
    monkeypatch.setattr(import_prompts_module, "load_catalog", lambda: {**catalog, "my_new_dataset": new})
    prompts = import_prompts(tmp_path)
    assert list(prompts) == list(catalog)
