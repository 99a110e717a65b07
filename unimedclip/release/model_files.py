"""What a UniMed-CLIP model directory holds: its weight files, parameter count and remote code, and what it lacks to
be published."""

import json
import math
from pathlib import Path

from huggingface_hub import ModelCard
from safetensors import safe_open
from transformers.dynamic_module_utils import get_relative_imports


def weight_files(model_dir: str | Path) -> list[Path]:
    """`model.safetensors`, or the shards its index lists; an empty list when neither exists."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return [model_dir / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    single = model_dir / "model.safetensors"
    return [single] if single.is_file() else []


def count_parameters(model_dir: str | Path) -> int:
    """Number of weights in the safetensors files of `model_dir`, from their headers."""
    files = weight_files(model_dir)
    if not files:
        raise FileNotFoundError(f"{model_dir} has no model.safetensors or model.safetensors.index.json.")
    total = 0
    for path in files:
        with safe_open(path, framework="pt") as weights:
            total += sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
    return total


def remote_code_files(folder: Path) -> list[str]:
    """The modules `auto_map` in config.json names, and every module they import relatively, as file names."""
    auto_map = json.loads((folder / "config.json").read_text()).get("auto_map", {})
    # An entry is one class reference, or a list of them (an image processor per backend).
    references = [ref for value in auto_map.values() for ref in ([value] if isinstance(value, str) else value) if ref]
    pending = sorted({reference.split(".")[0] + ".py" for reference in references})
    found: list[str] = []
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.append(name)
        if (folder / name).is_file():
            pending += [f"{module}.py" for module in get_relative_imports(folder / name)]
    return sorted(found)


def missing_model_files(folder: str | Path) -> list[str]:
    """What a model directory lacks to load with the auto classes and show our card; empty when complete."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return ["config.json"]
    missing = []
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        missing += [f"{path.name} (listed in {index.name})" for path in weight_files(folder) if not path.is_file()]
    elif not weight_files(folder):
        missing.append("model.safetensors (or model.safetensors.index.json and its shards)")
    for name in ("processor_config.json", "tokenizer_config.json"):
        if not (folder / name).is_file():
            missing.append(name)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        missing.append("tokenizer.json or vocab.txt")
    missing += [f"{name} (remote code)" for name in remote_code_files(folder) if not (folder / name).is_file()]
    readme = folder / "README.md"
    if not readme.is_file() or not ModelCard.load(readme).data.license:
        missing.append("README.md with metadata (unimedclip card --model-dir ...)")
    return missing
