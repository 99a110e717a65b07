"""Evaluate UniMed-CLIP and baselines, side by side, on the paper's 21-dataset zero-shot suite.

The command behind `evaluate_zero_shot.py` and `unimedclip evaluate`:

    python evaluate_zero_shot.py --model DIR_OR_REPO --data-root DIR [--datasets CT_axial PCAM ...]
    python evaluate_zero_shot.py --model DIR_OR_REPO --data ORG/NAME [--streaming]   # the benchmark Hub dataset
    python evaluate_zero_shot.py --data ORG/NAME --model unimed-clip/unimed-clip-vit-b16 vinid/plip \\
        hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224                # side by side
    python evaluate_zero_shot.py --model M --image-folder DIR --modality xray                 # your own data
    python evaluate_zero_shot.py --model M --task retrieval --csv pairs.csv --caption-column caption
    python evaluate_zero_shot.py --model M --data-root DIR --task linear-probe --shots 1,2,4,8,16

The test sets come from the original evaluation archive's folders (--data-root) or from the benchmark dataset built
from them (--data: a Hub id such as the default below, or a local copy), with the same numbers. --model takes
transformers models (UniMed-CLIP, CLIP-family baselines such as PLIP and PubMedCLIP) and open_clip models (`hf-hub:`
ids, `local-dir:` or folders holding open_clip_config.json, such as BiomedCLIP and PMC-CLIP releases; needs
`pip install "unimedclip[openclip]"`).

Writes results.json (configuration, per-dataset metrics, per-class recall, confusion matrices, per-modality means and
model-index entries for the model card) and results.md to --output after every dataset, and prints the table. With
several models, each one's results go to --output/<model>/, and the side-by-side table, per dataset and per
modality, to --output/comparison.json and comparison.md (`unimedclip card --comparison` shows it in a model card). A
dataset whose files are missing is reported and skipped; one that fails (a malformed CSV, an unknown label, no
readable image) is reported in `failed` while the others are evaluated; unreadable images are counted per dataset.
The exit status is non-zero when a dataset failed or none was evaluated, for any model.
"""

import argparse
import functools
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from ..inference.zero_shot import expand_labels
from ..modalities import MODALITIES
from . import (
    DEFAULT_PROMPTS,
    EvalDataset,
    Evaluator,
    catalog_dataset,
    csv_dataset,
    eval_results,
    hf_dataset,
    image_folder_dataset,
    load_catalog,
    markdown_table,
    summarize,
)
from .adapters import HF_HUB, LOCAL_DIR, load_model
from .comparison import compare, comparison_markdown
from .readers import BENCHMARK_REPO, benchmark_configs, benchmark_dataset, csv_pairs, hf_pairs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        nargs="+",
        required=True,
        help="Model(s) to evaluate, side by side when several: transformers directory or Hub id, or open_clip "
        "`hf-hub:ORG/NAME`, `local-dir:DIR` or folder.",
    )
    parser.add_argument("--revision", help="Hub revision of --model (one transformers model).")
    parser.add_argument("--task", choices=["zero-shot", "retrieval", "linear-probe"], default="zero-shot")
    data = parser.add_argument_group("data (the catalog's test sets, or one dataset of your own)")
    data.add_argument("--data-root", type=Path, help="Root of the evaluation data, laid out as the catalog says.")
    data.add_argument("--data", help=f"The benchmark dataset built from them: a Hub id ({BENCHMARK_REPO}) or folder.")
    data.add_argument("--datasets", nargs="+", help="Catalog keys to run (default: all 21).")
    data.add_argument("--image-folder", type=Path, help="root/<class>/<image> folders.")
    data.add_argument(
        "--csv", type=Path, help="CSV with a header: image path (relative to the CSV) and label/caption."
    )
    data.add_argument("--hf-dataset", help="Hugging Face dataset name or directory.")
    data.add_argument("--split", default="test")
    data.add_argument(
        "--streaming", action="store_true", help="Stream --data or --hf-dataset instead of downloading it first."
    )
    data.add_argument("--path-column", default="path")
    data.add_argument("--image-column", default="image")
    data.add_argument("--label-column", default="label")
    data.add_argument("--caption-column", default="caption")
    prompts = parser.add_argument_group("prompts")
    prompts.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="JSON {dataset: {class: [prompts]}}.")
    prompts.add_argument("--modality", choices=list(MODALITIES), help="Expand bare class names of your own data.")
    run = parser.add_argument_group("run")
    run.add_argument("--shots", default="1,2,4,8,16", help="Linear probe: training images per class.")
    run.add_argument("--seeds", default="0,1,2", help="Linear probe: seeds for drawing the shots.")
    run.add_argument("--batch-size", type=int, default=64)
    run.add_argument("--num-workers", type=int, default=4)
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--dtype", choices=DTYPES, default="bfloat16" if torch.cuda.is_available() else "float32")
    run.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "unimedclip" / "eval")
    run.add_argument("--output", type=Path, default=Path("eval_results"))
    args = parser.parse_args(argv)
    sources = [args.data_root, args.data, args.image_folder, args.csv, args.hf_dataset]
    if sum(source is not None for source in sources) != 1:
        parser.error("give one of --data-root, --data (the catalog's test sets), --image-folder, --csv, --hf-dataset")
    if args.task == "retrieval" and args.csv is None and args.hf_dataset is None:
        parser.error("--task retrieval needs --csv or --hf-dataset with a caption column")
    if len(args.model) > 1 and args.task != "zero-shot":
        parser.error(f"several models are compared on --task zero-shot only, not {args.task}")
    if len(args.model) > 1 and args.revision is not None:
        parser.error("--revision names the revision of one model; give one --model with it")
    try:
        args.names = model_names(args.model)
    except ValueError as error:
        parser.error(str(error))
    return args


def model_names(models: list[str]) -> dict[str, str]:
    """A name per --model, for tables and folders: a local folder's own name, else the Hub id."""
    names = {}
    for model in models:
        identifier = model.removeprefix(HF_HUB).removeprefix(LOCAL_DIR)
        name = Path(identifier).resolve().name if Path(identifier).exists() else identifier
        if name in names:
            raise ValueError(f"--model {names[name]} and {model} are both named {name!r}; rename one folder")
        names[name] = model
    return names


def own_dataset(args: argparse.Namespace):
    if args.image_folder is not None:
        return image_folder_dataset(args.image_folder)
    if args.csv is not None:
        return csv_dataset(args.csv, args.path_column, args.label_column)
    return hf_dataset(args.hf_dataset, args.split, args.image_column, args.label_column, args.streaming)


def datasets_to_run(args: argparse.Namespace) -> Iterator[tuple[str, Callable[[], EvalDataset]]]:
    """(name, loader) of every dataset to evaluate: the catalog's under --data-root or in --data, or the one given."""
    if args.data_root is None and args.data is None:
        yield str(args.image_folder or args.csv or args.hf_dataset), lambda: own_dataset(args)
        return
    catalog = load_catalog()
    unknown = sorted(set(args.datasets or []) - set(catalog))
    if unknown:
        raise SystemExit(f"Unknown dataset(s) {unknown}; the catalog has {sorted(catalog)}.")
    if args.data is not None:
        try:
            configs = benchmark_configs(args.data)
        except (FileNotFoundError, ValueError, ConnectionError) as error:
            raise SystemExit(f"Cannot read the benchmark dataset {args.data}: {error}") from None
    for key in args.datasets or catalog:
        if args.data is not None:
            yield key, functools.partial(benchmark_dataset, key, catalog[key], args.data, configs, args.streaming)
        else:
            yield key, functools.partial(catalog_dataset, key, catalog[key], args.data_root)


def write_report(report: dict, output: Path) -> None:
    """results.json (and results.md for zero-shot), replaced atomically: a crash never leaves a half-written file."""
    if report["config"]["task"] == "zero-shot":
        report["summary"] = summarize(report["results"])
        report["model_index"] = [asdict(result) for result in eval_results(report["results"])]
        write_atomically(output / "results.md", markdown_table(report["results"], report["summary"]))
    write_atomically(output / "results.json", json.dumps(report, indent=2) + "\n")


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """Returns the report of the one model, or with several models `{"reports": {name: report}, "comparison": ...}`."""
    args = parse_args(argv, prog)
    if len(args.names) == 1:
        report = evaluate_model(args, args.model[0], args.output)
        exit_on_failure({next(iter(args.names)): report})
        return report
    reports = {
        name: evaluate_model(args, model, args.output / name.replace("/", "--")) for name, model in args.names.items()
    }
    comparison = {"sources": args.names, **compare(reports)}
    write_atomically(args.output / "comparison.json", json.dumps(comparison, indent=2) + "\n")
    write_atomically(args.output / "comparison.md", comparison_markdown(comparison))
    print(comparison_markdown(comparison))
    print(f"Wrote {args.output / 'comparison.json'} and {args.output / 'comparison.md'}")
    exit_on_failure(reports)
    return {"reports": reports, "comparison": comparison}


def exit_on_failure(reports: dict[str, dict]) -> None:
    """Exit with a non-zero status, naming the model, when a dataset failed or none was evaluated."""
    problems = [
        f"{'' if len(reports) == 1 else name + ': '}{len(report['results'])} dataset(s) evaluated, "
        f"{len(report['failed'])} failed ({', '.join(report['failed']) or 'none'}), {len(report['skipped'])} missing."
        for name, report in reports.items()
        if report["failed"] or not report["results"]
    ]
    if problems:
        raise SystemExit("evaluate: " + " ".join(problems))


def evaluate_model(args: argparse.Namespace, name: str, output: Path) -> dict:
    """Evaluate one model on every dataset to run, writing its results to `output` after each; returns its report."""
    model, processor = load_model(name, args.revision, image_only=args.task == "linear-probe")
    model = model.to(args.device)
    evaluator = Evaluator(
        model,
        processor,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        dtype=DTYPES[args.dtype],
        cache_dir=args.cache_dir,
    )
    output.mkdir(parents=True, exist_ok=True)
    settings = {key: value for key, value in vars(args).items() if key not in ("model", "names", "output")}
    report = {
        "config": {"model": name, "output": str(output), **{key: str(value) for key, value in settings.items()}},
        "results": {},
        "skipped": {},
        "failed": {},
    }

    if args.task == "retrieval":
        if args.csv is not None:
            images, captions = csv_pairs(args.csv, args.path_column, args.caption_column)
        else:
            images, captions = hf_pairs(args.hf_dataset, args.split, args.image_column, args.caption_column)
        report["results"]["retrieval"] = evaluator.retrieval(images, captions)
    else:
        prompt_sets = json.loads(args.prompts.read_text()) if args.task == "zero-shot" else {}
        for key, load in datasets_to_run(args):
            try:
                dataset = load()
                if args.task == "linear-probe":
                    shots, seeds = [int(k) for k in args.shots.split(",")], [int(s) for s in args.seeds.split(",")]
                    report["results"][dataset.key] = evaluator.linear_probe(dataset, shots, seeds)
                else:
                    prompts = prompt_sets.get(dataset.key) or (
                        expand_labels(dataset.classes, args.modality) if args.modality else {}
                    )
                    report["results"][dataset.key] = evaluator.zero_shot(dataset, prompts)
            except FileNotFoundError as error:
                report["skipped"][key] = str(error)
                print(f"Skipping {key}: {error}", file=sys.stderr)
            except (ValueError, KeyError, IndexError) as error:  # one dataset's bad files never cost the others
                report["failed"][key] = f"{type(error).__name__}: {error}"
                print(f"Failed {key}: {error}", file=sys.stderr)
            write_report(report, output)
    write_report(report, output)
    if report["config"]["task"] == "zero-shot" and report["results"]:
        print(markdown_table(report["results"], report["summary"]))
    elif report["results"]:
        print(json.dumps(report["results"], indent=2))
    print(f"Wrote {output / 'results.json'}")
    return report


if __name__ == "__main__":
    main()
