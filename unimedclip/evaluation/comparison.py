"""Several models side by side on the same images and prompts: per dataset, per modality and overall, as JSON
(`comparison.json`) and a markdown table (`comparison.md`, and the model card's comparison section).

Means are taken over the datasets every model was evaluated on, so that no model's mean gains from a dataset another
model missed; the datasets some model missed are listed with its value and a dash for the others.
"""

from .evaluator import summarize

METRIC_TITLES = {"accuracy": "accuracy", "auc": "ROC AUC"}


def compare(reports: dict[str, dict]) -> dict:
    """`reports`: a model's zero-shot report (as in its results.json) by model name, in column order."""
    models = list(reports)
    keys = list(dict.fromkeys(key for report in reports.values() for key in report["results"]))
    datasets = {}
    for key in keys:
        result = next(report["results"][key] for report in reports.values() if key in report["results"])
        values = {model: reports[model]["results"].get(key, {}).get("value") for model in models}
        datasets[key] = {"modality": result["modality"], "metric": result["metric"], "values": values}
    common = [key for key in keys if None not in datasets[key]["values"].values()]
    summaries = {model: summarize({key: reports[model]["results"][key] for key in common}) for model in models}
    modalities = {}
    for model, summary in summaries.items():
        for modality, value in summary["modalities"].items():
            count = sum((datasets[key]["modality"] or "other") == modality for key in common)
            modalities.setdefault(modality, {"datasets": count, "values": {}})["values"][model] = value
    return {
        "models": models,
        "datasets": datasets,
        "modalities": modalities,
        "average": {"datasets": len(common), "values": {model: s["average"] for model, s in summaries.items()}},
        "not_evaluated": {
            model: {**report.get("skipped", {}), **report.get("failed", {})} for model, report in reports.items()
        },
    }


def comparison_markdown(comparison: dict) -> str:
    """The table: one row per dataset, then the per-modality and overall means; the best value of a row in bold
    (unless every model has it)."""
    models = comparison["models"]
    lines = [
        "| dataset | modality | metric | " + " | ".join(models) + " |",
        "|---|---|---|" + "---:|" * len(models),
    ]
    for key, row in comparison["datasets"].items():
        cells = _cells(row["values"], models)
        lines.append(f"| {key} | {row['modality'] or ''} | {METRIC_TITLES[row['metric']]} | {cells} |")
    for modality, row in comparison["modalities"].items():
        lines.append(f"| mean, {modality} ({row['datasets']}) | | | {_cells(row['values'], models)} |")
    average = comparison["average"]
    count = average["datasets"]
    label = f"mean of the {count} dataset{'s' if count != 1 else ''} every model was evaluated on"
    lines.append(f"| **{label}** | | | {_cells(average['values'], models)} |")
    return "\n".join(lines) + "\n"


def _cells(values: dict, models: list[str]) -> str:
    present = [value for value in values.values() if value is not None]
    best = max(present) if len(set(present)) > 1 else None
    cells = []
    for model in models:
        value = values.get(model)
        cells.append("–" if value is None else f"**{value:.2f}**" if value == best else f"{value:.2f}")
    return " | ".join(cells)
