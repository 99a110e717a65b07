"""Import the original UniMed-CLIP prompt ensembles from a clone of its repository, to reproduce the paper's protocol.

    unimedclip import-prompts --original-repo UniMed-CLIP --output paper_prompts.json
    python evaluate_zero_shot.py --model M --data-root D --prompts paper_prompts.json

The original keeps one dict literal `{class: [prompt, ...]}` per dataset in its `constants.py`. That file is parsed,
never executed: only the needed assignments are read with `ast.literal_eval`. Each catalog entry names its
variable in `original_prompts`, with the original's selection rule where it had one (`prompts_per_class`: RSNA used
only the first prompt per class, CheXpert-5x200 at most the first 11). Classes map to our catalog by position (the
original's class index is its dict order). Catalog entries the original did not evaluate have no `original_prompts`
and are left out.
"""

import argparse
import ast
import json
from pathlib import Path

from .readers import load_catalog


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
    catalog = {key: entry for key, entry in load_catalog().items() if "original_prompts" in entry}
    values = read_literals(constants_file, {entry["original_prompts"]["variable"] for entry in catalog.values()})
    prompts = {}
    for key, entry in catalog.items():
        variable = entry["original_prompts"]["variable"]
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
        limit = entry["original_prompts"].get("prompts_per_class")
        prompts[key] = {name: texts[:limit] for name, texts in zip(entry["classes"], original.values())}
    return prompts


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--original-repo", required=True, type=Path, help="A clone of mbzuai-oryx/UniMed-CLIP.")
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    prompts = import_prompts(args.original_repo)
    args.output.write_text(json.dumps(prompts, indent=2) + "\n")
    print(f"Wrote the original prompts of {len(prompts)} datasets to {args.output}")


if __name__ == "__main__":
    main()
