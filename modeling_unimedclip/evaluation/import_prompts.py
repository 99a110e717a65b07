"""Import the original UniMed-CLIP prompt ensembles from a clone of its repository, to reproduce the paper's protocol.

    python -m modeling_unimedclip.evaluation.import_prompts --original-repo UniMed-CLIP --output paper_prompts.json
    python evaluate_zero_shot.py --model M --data-root D --prompts paper_prompts.json

The original keeps one dict literal `{class: [prompt, ...]}` per dataset in its `constants.py`. That file is parsed,
never executed: only the needed assignments are read with `ast.literal_eval`. Classes map to our catalog by position
(the original's class index is its dict order), and the original's selection rules apply: RSNA uses only the first
prompt per class, CheXpert-5x200 at most the first 11, every other dataset all of them.
"""

import argparse
import ast
import json
from pathlib import Path

from .data import load_catalog

# Our catalog key -> the variable in the original `constants.py` that its evaluation used for that dataset.
ORIGINAL_VARIABLES = {
    "chexpert-5x200": "CHEXPERT_CLASS_PROMPTS_webdataset",
    "rsna_pneumonia": "RSNA_CLASS_PROMPTS_webdataset",
    "CT_axial": "ct_scan_labels",
    "CT_coronal": "ct_scan_labels",
    "CT_sagittal": "ct_scan_labels",
    "acl_mri": "acl_mri_prompts",
    "meniscal_mri": "meniscus_mri_prompts",
    "breast_us": "breast_us_prompts",
    "thyroid_us": "thyroid_us_prompts",
    "dr_regular": "diabetic_retinopathy_prompts",
    "refuge_retina": "refuge_prompts",
    "five_retina": "five_prompts",
    "odir_retina": "odir_retina_prompts",
    "LC25000_lung": "LC25000_lung",
    "LC25000_colon": "LC25000_colon",
    "PCAM": "PCAM",
    "NCK_CRC": "NCK_CRC_prompts",
    "BACH": "BACH_prompts",
    "Osteo": "Osteo_prompts",
    "skin_cancer": "skin_cancer_prompts",
    "skin_tumor": "skin_tumor_prompts",
}
# How many prompts per class the original evaluation kept (None: all).
PROMPT_LIMITS = {"rsna_pneumonia": 1, "chexpert-5x200": 11}


def read_literals(constants_file: Path, names: set[str]) -> dict[str, object]:
    """The values of the top-level assignments `name = <literal>` for `names`, without running the file."""
    tree = ast.parse(constants_file.read_text(encoding="utf-8"), filename=str(constants_file))
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in names:
                try:
                    values[name] = ast.literal_eval(node.value)
                except ValueError as error:
                    raise ValueError(f"{constants_file}: {name} is not a plain literal ({error}).") from error
    return values


def import_prompts(original_repo: str | Path) -> dict[str, dict[str, list[str]]]:
    """Our prompt-file format, `{dataset: {our class name: [prompts]}}`, filled with the original's prompts."""
    constants_file = Path(original_repo) / "constants.py"
    if not constants_file.is_file():
        raise FileNotFoundError(f"{constants_file} does not exist: is {original_repo} a clone of UniMed-CLIP?")
    values = read_literals(constants_file, set(ORIGINAL_VARIABLES.values()))
    catalog, prompts = load_catalog(), {}
    for key, entry in catalog.items():
        variable = ORIGINAL_VARIABLES[key]
        if variable not in values:
            raise ValueError(f"{constants_file} defines no {variable}, the prompts of {key}.")
        original = values[variable]
        if not isinstance(original, dict) or not all(isinstance(texts, list) for texts in original.values()):
            raise ValueError(f"{constants_file}: {variable} is not a dict of prompt lists.")
        if len(original) != len(entry["classes"]):
            raise ValueError(
                f"{key}: {variable} has {len(original)} classes ({list(original)}), the catalog "
                f"{len(entry['classes'])} ({entry['classes']})."
            )
        limit = PROMPT_LIMITS.get(key)
        prompts[key] = {name: texts[:limit] for name, texts in zip(entry["classes"], original.values())}
    return prompts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original-repo", required=True, type=Path, help="A clone of mbzuai-oryx/UniMed-CLIP.")
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    prompts = import_prompts(args.original_repo)
    args.output.write_text(json.dumps(prompts, indent=2) + "\n")
    print(f"Wrote the original prompts of {len(prompts)} datasets to {args.output}")


if __name__ == "__main__":
    main()
