"""A mutation pass over the core modules: put one plausible bug in at a time, run the tests that guard that code, and
report the bugs no test catches (survivors).

    make mutation                          # python tests/mutants.py --all: both passes below
    python tests/mutants.py                # the hand-written mutants
    python tests/mutants.py -k clamp       # those whose name contains "clamp"
    python tests/mutants.py --operators    # the operator pass (OPERATOR_MODULES)

Hand-written mutants (MUTANTS) are the bugs of kinds that once passed the suite; each replaces one exact snippet of
one file, and a snippet that no longer occurs exactly once is reported as stale (update the mutant with the code), so
the list cannot rot silently. The operator pass generates mutants mechanically over a few core modules: every
comparison, arithmetic and boolean operator swapped for its neighbour, every `not` and unary minus dropped, every
number and boolean constant changed (error messages, annotations and `dim=` arguments excepted). Its survivors that
are not bugs are listed in ACCEPTED with the reason; any other survivor fails the pass.

The file is restored after each run, also on Ctrl-C. Run it on a clean working tree: it edits files in place.
"""

import argparse
import ast
import dataclasses
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    original: str
    mutated: str
    tests: tuple[str, ...]  # pytest node ids or -k expressions as "path::name" or "path -k expr"
    position: tuple[int, int] | None = None  # (line from 1, column): replace there; else the one occurrence

    def apply(self, source: str) -> str | None:
        """The mutated source, or None if the original is not where the mutant expects it (stale)."""
        if self.position is None:
            return source.replace(self.original, self.mutated) if source.count(self.original) == 1 else None
        line, column = self.position
        lines = source.splitlines(keepends=True)
        text = lines[line - 1]
        if text[column : column + len(self.original)] != self.original:
            return None
        lines[line - 1] = text[:column] + self.mutated + text[column + len(self.original) :]
        return "".join(lines)


MUTANTS = [
    Mutant(
        "resume forgets the data epoch",
        "unimedclip/training/checkpointing.py",
        'self.epoch = state["epoch"]',
        "self.epoch = 0",
        ("tests/test_train.py -k killed",),
    ),
    Mutant(
        "logit_scale not clamped",
        "train.py",
        "unwrapped.logit_scale.clamp_(0, MAX_LOGIT_SCALE)",
        "unwrapped.logit_scale.clamp_(0, 2 * MAX_LOGIT_SCALE)",
        ("tests/test_train.py -k clamped",),
    ),
    Mutant(
        "training normalisation with mean and std swapped",
        "unimedclip/data/transforms.py",
        "return (pixel_values.to(dtype) / 255 - mean) / std",
        "return (pixel_values.to(dtype) / 255 - std) / mean",
        ("tests/test_unimed_data.py -k same_crop",),
    ),
    Mutant(
        "random crop scale range changed",
        "unimedclip/data/transforms.py",
        "CROP_SCALE = (0.9, 1.0)",
        "CROP_SCALE = (0.8, 1.0)",
        ("tests/test_unimed_data.py -k crop",),
    ),
    Mutant(
        "volume max pooling takes the minimum",
        "unimedclip/inference/zero_shot.py",
        "best_slice = (slice_embeds @ class_embeds.T).max(dim=0).values",
        "best_slice = (slice_embeds @ class_embeds.T).min(dim=0).values",
        ("tests/test_zero_shot.py", "tests/test_medical.py -k predict"),
    ),
    Mutant(
        "class embeddings not renormalised",
        "unimedclip/inference/zero_shot.py",
        "return F.normalize(torch.stack([class_embeds.mean(dim=0) for class_embeds in per_class]), dim=-1)",
        "return torch.stack([class_embeds.mean(dim=0) for class_embeds in per_class])",
        ("tests/test_zero_shot.py", "tests/test_medical.py -k predict"),
    ),
    Mutant(
        "contrastive labels ignore the rank",
        "unimedclip/training/loss.py",
        "labels = torch.arange(len(image_embeds), device=image_embeds.device) + len(image_embeds) * self.rank",
        "labels = torch.arange(len(image_embeds), device=image_embeds.device)",
        ("tests/test_train_distributed.py",),
    ),
    Mutant(
        "weight decay on biases",
        "unimedclip/training/optim.py",
        'return parameter.ndim >= 2 and not name.endswith("bias") and "logit_scale" not in name',
        'return parameter.ndim >= 1 and "logit_scale" not in name',
        ("tests/test_train.py -k decay",),
    ),
    Mutant(
        "warmup off by one",
        "unimedclip/training/optim.py",
        "return (step + 1) / warmup_steps",
        "return step / warmup_steps",
        ("tests/test_train.py -k schedule",),
    ),
    Mutant(
        "processor rescales by multiplying with 1/255",
        "modeling_unimedclip/image_processing_unimedclip.py",
        "pixels = pixels / np.float32(255) if factor == DEFAULT_RESCALE_FACTOR else pixels * np.float32(factor)",
        "pixels = pixels * np.float32(factor)",
        ("tests/test_processor.py -k open_clip_transform",),
    ),
    Mutant(
        "the source's own caption replaced by the last",
        "unimedclip/data/records.py",
        'return captions[0].strip() if captions else ""',
        'return captions[-1].strip() if captions else ""',
        ("tests/test_unimed_data.py -k caption",),
    ),
    Mutant(
        "captions and crops ignore the epoch",
        "unimedclip/data/stream.py",
        'rng = _sample_rng(seed, epoch, raw["__url__"], raw["__key__"])',
        'rng = _sample_rng(seed, 0, raw["__url__"], raw["__key__"])',
        ("tests/test_unimed_data.py -k deterministic",),
    ),
    Mutant(
        "leftover samples of the last partial batch not reported",
        "unimedclip/data/loader.py",
        "skipped[PARTIAL_BATCH] += len(samples)",
        "pass",
        ("tests/test_unimed_data.py -k end_of_the_stream",),
    ),
    Mutant(
        "annotation paths may leave the source folder",
        "dataset_scripts/images.py",
        'if relative.is_absolute() or ".." in relative.parts:',
        "if False:",
        ("tests/test_dataset_build.py -k outside",),
    ),
    Mutant(
        "altered shards pass verification",
        "unimedclip/data/manifest.py",
        'return path.is_file() and path.stat().st_size == entry["bytes"] and file_sha256(path) == entry["sha256"]',
        'return path.is_file() and path.stat().st_size == entry["bytes"]',
        ("tests/test_dataset_build.py -k altered",),
    ),
    Mutant(
        "binary AUC from the wrong score difference",
        "unimedclip/evaluation/metrics/unimed_zero_shot/unimed_zero_shot.py",
        "return float(roc_auc_score(labels, scores[:, 1] - scores[:, 0]))",
        "return float(roc_auc_score(labels, scores[:, 0] - scores[:, 1]))",
        ("tests/test_evaluation.py -k metrics",),
    ),
    Mutant(
        "text feature from the first layer's [CLS] instead of the last",
        "modeling_unimedclip/modeling_unimedclip.py",
        "return outputs, model.text_projection(outputs.last_hidden_state[:, 0])",
        "return outputs, model.text_projection(outputs.last_hidden_state[:, 1])",
        ("tests/test_parity.py",),
    ),
    Mutant(
        "fused attention weights split in the wrong order",
        "unimedclip/release/original_format.py",
        'for name, chunk in zip("qkv", tensor.chunk(3, dim=0)):',
        'for name, chunk in zip("kqv", tensor.chunk(3, dim=0)):',
        ("tests/test_parity.py",),
    ),
    Mutant(
        "MONOCHROME1 not inverted",
        "modeling_unimedclip/dicom_unimedclip.py",
        "return 255.0 - display if is_inverted(dataset) else display",
        "return display",
        ("tests/test_medical.py -k monochrome or presentation",),
    ),
    Mutant(
        "a failed checkpoint write leaves its partial directory",
        "unimedclip/training/checkpointing.py",
        "shutil.rmtree(temporary, ignore_errors=True)  # on a full disk, this frees the space it took",
        "pass",
        ("tests/test_train.py -k full_disk",),
    ),
    Mutant(
        "dataset upload sends the whole folder",
        "unimedclip/release/hub.py",
        "allow_patterns=[glob.escape(file) for file in files],",
        "allow_patterns=None,",
        ("tests/test_dataset_build.py -k exactly",),
    ),
    Mutant(
        "no pixel budget",
        "modeling_unimedclip/dicom_unimedclip.py",
        "if pixels > MAX_IMAGE_PIXELS:",
        "if False:",
        ("tests/test_medical.py -k bomb", "tests/test_evaluation.py -k bad_dataset"),
    ),
    Mutant(
        "rotation deletes checkpoints queued for upload",
        "unimedclip/training/checkpointing.py",
        "if old not in protected:",
        "if True:",
        ("tests/test_train.py -k rotation",),
    ),
    Mutant(
        "interval losses not averaged over the processes",
        "unimedclip/training/interval.py",
        "losses = [loss / processes for loss in total[: self.steps * accumulation]]",
        "losses = list(total[: self.steps * accumulation])",
        ("tests/test_throughput.py -k interval_record",),
    ),
    Mutant(
        "non-finite loss reported one step late",
        "train.py",
        "bad_step = first_step + offset + 1",
        "bad_step = first_step + offset + 2",
        ("tests/test_train.py -k nan", "tests/test_throughput.py -k non_finite"),
    ),
    Mutant(
        "attention FLOPs halved",
        "unimedclip/training/throughput.py",
        "8 * n * d * d + 4 * n * d * f + 4 * n * n * d",
        "8 * n * d * d + 4 * n * d * f + 2 * n * n * d",
        ("tests/test_throughput.py -k flop_counter",),
    ),
    Mutant(
        "every micro-step reads its loss on the host",
        "train.py",
        "record.add(micro_step, loss, attention_mask, logit_scale, flops)",
        "record.add(micro_step, loss, attention_mask, logit_scale, flops) or loss.item()",
        ("tests/test_throughput.py -k do_not_wait",),
    ),
    Mutant(
        "device decoding draws its crop box from another generator",
        "unimedclip/data/device_decode.py",
        '"crop_box": random_resized_crop_box(*size, rng),',
        '"crop_box": random_resized_crop_box(*size, random.Random(0)),',
        ("tests/test_throughput.py -k device_decode_stream",),
    ),
]


# The operator pass: modules whose every operator and constant matters, and the tests that guard each.
OPERATOR_MODULES = {
    "unimedclip/inference/zero_shot.py": ("tests/test_zero_shot.py", "tests/test_medical.py -k predict"),
    "unimedclip/training/loss.py": (
        "tests/test_train.py -k loss or clamp",
        "tests/test_train_distributed.py",
        "tests/test_throughput.py -k do_not_wait",
    ),
    "unimedclip/training/interval.py": ("tests/test_throughput.py -k interval or non_finite or logged",),
    "unimedclip/data/transforms.py": ("tests/test_unimed_data.py -k crop or normal or transform",),
    "unimedclip/evaluation/metrics/unimed_zero_shot/unimed_zero_shot.py": ("tests/test_evaluation.py",),
}

# Operator-pass survivors that are not bugs, by mutant name ("file: original -> mutated in `source line`"): why.
BATCH_SIZE_ONLY = "a default batch size: the embeddings do not depend on it"
ACCEPTED: dict[str, str] = {
    "unimedclip/inference/zero_shot.py: 64 -> 65 in `def text_embeddings(model, processor, texts: list[str], "
    "batch_size: int = 64) -> torch.Tensor:`": BATCH_SIZE_ONLY,
    "unimedclip/inference/zero_shot.py: 32 -> 33 in `def image_embeddings(model, processor, images: list, "
    "batch_size: int = 32, **image_kwargs) -> torch.Tensor:`": BATCH_SIZE_ONLY,
    "unimedclip/data/transforms.py: width / height < min_ratio -> width / height <= min_ratio in "
    "`if width / height < min_ratio:`": "at a ratio of exactly 3:4 both branches crop the whole image",
    "unimedclip/data/transforms.py: width / height > max_ratio -> width / height >= max_ratio in "
    "`elif width / height > max_ratio:`": "at a ratio of exactly 4:3 both branches crop the whole image",
    "unimedclip/evaluation/metrics/unimed_zero_shot/unimed_zero_shot.py: support > 0 -> support >= 0 in `recall = "
    "np.divide(np.diag(matrix), support, out=np.full(len(support), np.nan), where=support > 0)`": "0 / 0 for an "
    "absent class is the NaN `out` already holds (with a warning)",
    "unimedclip/evaluation/metrics/unimed_zero_shot/unimed_zero_shot.py: labels == c -> labels != c in `present = "
    "[c for c in range(scores.shape[1]) if 0 < (labels == c).sum() < len(labels)]`": "the same condition: a class "
    "is neither absent nor alone exactly when its complement is neither",
}

SWAPS = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In,
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.And: ast.Or, ast.Or: ast.And,
}  # fmt: skip


def _variants(node: ast.AST) -> list[ast.AST]:
    """The mutations of one node (a copy each), or none."""
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in SWAPS:
        return [ast.Compare(node.left, [SWAPS[type(node.ops[0])]()], node.comparators)]
    if isinstance(node, ast.BinOp) and type(node.op) in SWAPS:
        return [ast.BinOp(node.left, SWAPS[type(node.op)](), node.right)]
    if isinstance(node, ast.BoolOp) and type(node.op) in SWAPS:
        return [ast.BoolOp(SWAPS[type(node.op)](), node.values)]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
        return [node.operand]
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        return [ast.Constant(not node.value)]
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return [ast.Constant(node.value + 1 if isinstance(node.value, int) else node.value * 2)]
    return []


def _skipped(tree: ast.AST) -> set[int]:
    """ids of the nodes no mutation should touch: error messages, f-strings, annotations, `dim=` arguments."""
    roots = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise | ast.JoinedStr | ast.Assert):
            roots.append(node)
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
        elif isinstance(node, ast.arg) and node.annotation is not None:
            roots.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            roots.append(node.returns)
        elif isinstance(node, ast.keyword) and node.arg == "dim":
            roots.append(node.value)  # -1 -> 1 names the same axis of the 2-D tensors these modules handle
    return {id(child) for root in roots for child in ast.walk(root)}


def operator_mutants(file: str, tests: tuple[str, ...]) -> list[Mutant]:
    source = (ROOT / file).read_text()
    tree = ast.parse(source)
    lines = source.splitlines()
    skipped = _skipped(tree)
    mutants = []
    for node in ast.walk(tree):
        if id(node) in skipped or getattr(node, "lineno", None) != getattr(node, "end_lineno", 0):
            continue  # only single-line nodes, replaced where they stand
        encoded = lines[node.lineno - 1].encode()  # ast's columns count UTF-8 bytes
        column = len(encoded[: node.col_offset].decode())
        original = encoded[node.col_offset : node.end_col_offset].decode()
        for variant in _variants(node):
            mutated = ast.unparse(variant)
            if mutated != original:
                name = f"{file}: {original} -> {mutated} in `{lines[node.lineno - 1].strip()}`"
                mutants.append(Mutant(name, file, original, mutated, tests, (node.lineno, column)))
    names = [mutant.name for mutant in mutants]
    repeated = {name for name in names if names.count(name) > 1}  # the same change twice in one line
    if repeated:
        mutants = [
            dataclasses.replace(mutant, name=f"{mutant.name} (column {mutant.position[1]})")
            if mutant.name in repeated
            else mutant
            for mutant in mutants
        ]
    return sorted(mutants, key=lambda mutant: mutant.position)


def pytest_command(spec: str) -> list[str]:
    path, _, expression = spec.partition(" -k ")
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", path]
    return command + (["-k", expression] if expression else [])


def run(mutant: Mutant, timeout_s: int) -> str:
    """'killed', 'survived' or 'stale' (the snippet is not where the mutant expects it)."""
    path = ROOT / mutant.file
    source = path.read_text()
    mutated = mutant.apply(source)
    if mutated is None:
        return "stale"
    try:
        path.write_text(mutated)
        for spec in mutant.tests:
            environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
            try:
                result = subprocess.run(
                    pytest_command(spec), cwd=ROOT, capture_output=True, timeout=timeout_s, env=environment
                )
            except subprocess.TimeoutExpired:
                return "killed"  # a test that hangs on the bug catches it too
            if result.returncode not in (0, 5):  # 5: no test selected, which must not count as a kill
                return "killed"
        return "survived"
    finally:
        path.write_text(source)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", dest="select", help="only the mutants whose name contains this")
    parser.add_argument("--operators", action="store_true", help="only the operator pass")
    parser.add_argument("--all", action="store_true", help="the hand-written mutants, then the operator pass")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per test run")
    args = parser.parse_args(argv)
    mutants = [] if args.operators else list(MUTANTS)
    if args.operators or args.all:
        mutants += [mutant for file, tests in OPERATOR_MODULES.items() for mutant in operator_mutants(file, tests)]
    mutants = [mutant for mutant in mutants if not args.select or args.select in mutant.name]
    outcomes = {}
    for mutant in mutants:
        started = time.perf_counter()
        outcomes[mutant.name] = run(mutant, args.timeout)
        where = f"line {mutant.position[0]}: " if mutant.position else ""
        print(f"{outcomes[mutant.name]:9s} {time.perf_counter() - started:6.1f} s  {where}{mutant.name}", flush=True)
    accepted = {name for name, outcome in outcomes.items() if outcome == "survived" and name in ACCEPTED}
    bad = {name: outcome for name, outcome in outcomes.items() if outcome != "killed" and name not in accepted}
    print(f"\n{len(outcomes) - len(bad) - len(accepted)} of {len(outcomes)} mutants killed", end="")
    print(f", {len(accepted)} accepted survivor(s) (ACCEPTED says why)" if accepted else "", end="")
    print(f"; not killed: {bad}" if bad else "")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
