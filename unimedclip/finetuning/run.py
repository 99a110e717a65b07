"""A fine-tuning run on Accelerate, with train.py's checkpoints, resume and uploads.

    <output_dir>/config.yaml          the resolved configuration (a resumed run must agree with it)
    <output_dir>/checkpoints/step-N/  accelerate's state, the data position, finetune_state.json (the results before
                                      training, the validations, early stopping) and model/ (the classifier then)
    <output_dir>/best/                the classifier of the best validation so far
    <output_dir>/logs/                TensorBoard (or the trackers of --report-to)
    <output_dir>/final/               the classifier to use: weights, processor, label maps, model card, and
                                      results.json (before and after, on validation and test; the WiSE-FT sweep)

The classifier is evaluated on the validation and test data before training (the zero-shot classifier, when the
checkpoint has a text tower) and after: the best validation point, or its WiSE-FT mix with the zero-shot classifier.
Evaluation runs on the main process; the others wait for its verdict.
"""

import contextlib
import copy
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration, broadcast_object_list, set_seed
from torch.optim.lr_scheduler import LambdaLR
from torchdata.stateful_dataloader import StatefulDataLoader
from tqdm.auto import tqdm

from modeling_unimedclip import UniMedCLIPForImageClassification

from ..evaluation.readers import ImageDataset, collate
from ..release.classifier_card import render_classifier_card
from ..training.checkpointing import (
    DataStreamState,
    check_finite_weights,
    check_resume,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
    stop_on_non_finite_loss,
    write_atomically,
)
from ..training.config import ConfigurationError, check_launch
from ..training.memory import peak_memory_gib
from ..training.optim import build_optimizer, lr_factor
from ..training.uploads import BackgroundPusher
from .config import METRICS, RESUMABLE_CHANGES, FinetuneConfig
from .data import DataError, LabelledData, load_labelled_data
from .metrics import SplitEvaluator
from .model import load_processor, plain_classifier, prepare_for_method, starting_classifier
from .sampling import EpochBatches, class_weights
from .state import RunState
from .wise_ft import choose_coefficient, interpolate

logger = logging.getLogger(__name__)


def batch_layout(config: FinetuneConfig, world_size: int) -> tuple[int, int]:
    """(images per device per forward pass, micro-steps per optimizer step) for the global `batch_size`."""
    micro = config.micro_batch_size or config.batch_size // world_size
    if micro == 0 or config.batch_size % (micro * world_size):
        raise ConfigurationError(
            f"batch_size {config.batch_size} must be a multiple of micro_batch_size x processes = "
            f"{micro} x {world_size}."
        )
    return micro, config.batch_size // (micro * world_size)


def evaluate_splits(evaluator: SplitEvaluator, model, data: LabelledData, what: str) -> dict:
    """Metrics of `model` on the validation and (when given) test data."""
    return {
        name: evaluator(model, split.samples, f"{what}: {name}")
        for name, split in data.splits.items()
        if name != "train"
    }


def base_model_id(config: FinetuneConfig) -> str | None:
    """The Hub id the model card names as base model: --base-model-id, else --model unless it is a local path."""
    if config.base_model_id:
        return config.base_model_id
    return None if Path(config.model).exists() else config.model


def conclude(
    config: FinetuneConfig,
    data: LabelledData,
    state: RunState,
    evaluator: SplitEvaluator,
    zero_shot_weights: dict[str, torch.Tensor] | None,
    trained: torch.nn.Module,
) -> tuple[UniMedCLIPForImageClassification, dict]:
    """The final classifier and the results: the best validation point (the last weights if no validation had a
    score), mixed with the zero-shot classifier at the coefficient that validates best when WiSE-FT is on."""
    best = Path(config.output_dir) / "best"
    if state.best_step is not None:
        model = UniMedCLIPForImageClassification.from_pretrained(best).to(next(trained.parameters()).device)
    else:
        model = copy.deepcopy(plain_classifier(trained))
    description = f"the best validation, at step {state.best_step}" if state.best_step else "the last step"
    wise_ft = None
    if zero_shot_weights is not None:
        fine_tuned = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        validation = data.splits["validation"].samples

        def score(coefficient: float) -> float:
            model.load_state_dict(interpolate(zero_shot_weights, fine_tuned, coefficient))
            return evaluator(model, validation, f"WiSE-FT {coefficient:g}")[config.metric_for_best_model]

        chosen, scores = choose_coefficient(config.wise_ft_coefficients, score)
        model.load_state_dict(interpolate(zero_shot_weights, fine_tuned, chosen))
        wise_ft = {
            "metric": config.metric_for_best_model,
            "coefficient": chosen,
            "validation": {f"{coefficient:g}": value for coefficient, value in scores.items()},
        }
        description += f", WiSE-FT mixed with the zero-shot classifier at {chosen:g}"
    results = {
        "base_model": config.model,
        "method": config.method,
        "metric_for_best_model": config.metric_for_best_model,
        "classes": data.classes,
        "data": data.describe(),
        "before": state.before,
        "after": {
            "model": description,
            "best_step": state.best_step,
            **evaluate_splits(evaluator, model, data, "after"),
        },
        "wise_ft": wise_ft,
        "validation_history": state.history,
        "config": dataclasses.asdict(config),
    }
    return model, results


def finetune(config: FinetuneConfig, pusher: BackgroundPusher | None = None) -> Path:
    """Run (or resume) fine-tuning; returns the directory of the final classifier.

    `pusher` uploads checkpoints when `push_to_hub` is set; default: a `BackgroundPusher` with the real Hub API.
    """
    check_resume(dataclasses.asdict(config), config.output_dir, config.resume, RESUMABLE_CHANGES)
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with=config.trackers,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        step_scheduler_with_optimizer=False,
    )
    check_launch(accelerator)
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ConfigurationError("Fine-tuning runs with one copy of the model per device (DDP), not FSDP/DeepSpeed.")
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    main = accelerator.is_main_process
    device = accelerator.device
    micro_batch_size, accumulation = batch_layout(config, accelerator.num_processes)

    set_seed(config.seed)
    processor = load_processor(config)
    data = load_labelled_data(config, processor.image_processor)
    sampler = EpochBatches(
        data.labels,
        micro_batch_size,
        accumulation,
        accelerator.process_index,
        accelerator.num_processes,
        config.seed,
        config.balanced_sampling,
    )
    if sampler.steps_per_epoch == 0:
        raise DataError(
            f"The {len(data.labels)} training images do not fill one batch of {config.batch_size}: use a smaller "
            "--batch-size or more data."
        )
    total_steps = config.max_steps or config.epochs * sampler.steps_per_epoch
    warmup_steps = config.warmup_steps if config.warmup_steps is not None else total_steps // 10
    if warmup_steps >= total_steps:
        raise ConfigurationError(
            f"warmup_steps ({warmup_steps}) must be smaller than the total steps ({total_steps})."
        )
    eval_every = config.eval_every or sampler.steps_per_epoch
    checkpoint_every = config.checkpoint_every or eval_every
    classifier, zero_shot = starting_classifier(config, data.classes, processor)
    evaluator = SplitEvaluator(processor.image_processor, data.classes, config.eval_batch_size, config.num_workers)
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(config.to_yaml())

    state = RunState()
    if not config.resume:
        reference = (zero_shot if zero_shot is not None else classifier).to(device)
        with accelerator.autocast():
            before = evaluate_splits(evaluator, reference, data, "before") if main else None
        state.before = {
            "model": "the zero-shot classifier" if zero_shot is not None else f"{config.model} as it is",
            **broadcast_object_list([before])[0],
        }
    zero_shot_weights = (
        {name: tensor.detach().cpu().clone() for name, tensor in zero_shot.state_dict().items()}
        if config.wise_ft
        else None
    )
    del zero_shot

    model = prepare_for_method(classifier, config)
    optimizer = build_optimizer(model, config, device)
    scheduler = LambdaLR(optimizer, lambda step: lr_factor(step, warmup_steps, total_steps))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    weights = class_weights(data.labels, len(data.classes)).to(device) if config.class_weights else None
    set_seed(config.seed + accelerator.process_index)

    loader = StatefulDataLoader(
        ImageDataset(data.splits["train"].samples, processor.image_processor, decode=False),
        batch_sampler=sampler,
        num_workers=config.num_workers,
        collate_fn=collate,
        # Its own generator: a new iterator draws a seed from it, not from the global RNG the checkpoints restore.
        generator=torch.Generator().manual_seed(config.seed + accelerator.process_index),
    )
    data_state = DataStreamState(loader, sampler)
    step = 0
    if config.resume:
        path = resolve_resume(config.resume, output_dir)
        step = load_checkpoint(accelerator, path, data_state)
        state = RunState.load(path)

    def micro_batches():
        while True:
            yield from loader
            data_state.next_epoch()

    def export_model(directory: Path) -> None:
        if main:
            plain_classifier(unwrapped).save_pretrained(directory)
            processor.save_pretrained(directory)

    def checkpoint() -> None:
        check_finite_weights(accelerator, model, step)
        uploading = pusher.pending_checkpoints() if pusher is not None else set()

        def export(directory: Path) -> None:
            export_model(directory / "model")
            if main:
                state.save(directory)

        path = save_checkpoint(
            accelerator, output_dir, step, data_state, config.keep_checkpoints, export, protected=uploading
        )
        if pusher is not None:
            pusher.push(path / "model", f"Fine-tuning checkpoint, step {step}")

    def validate() -> None:
        with accelerator.autocast():
            metrics = evaluator(unwrapped, data.splits["validation"].samples, "validation") if main else None
        metrics = broadcast_object_list([metrics])[0]
        accelerator.log({f"validation/{key}": metrics[key] for key in METRICS}, step=step)
        if state.record(step, metrics, config.metric_for_best_model):
            write_atomically(accelerator, output_dir / "best", export_model, f"the best model (step {step})")

    if not (config.push_to_hub and main):
        pusher = None
    elif pusher is None:
        pusher = BackgroundPusher(config.push_to_hub)
    accelerator.init_trackers("unimed-clip-finetune", {k: str(v) for k, v in dataclasses.asdict(config).items()})
    if not config.resume:
        accelerator.log({f"validation/{key}": state.before["validation"][key] for key in METRICS}, step=0)
    logger.info(
        f"{config.method}: {len(data.labels)} training images of {len(data.classes)} classes; global batch "
        f"{config.batch_size} = {accelerator.num_processes} process(es) x {micro_batch_size} x {accumulation} "
        f"accumulation; steps {step} -> {total_steps}, validation every {eval_every}"
    )
    batches = micro_batches()
    progress = tqdm(initial=step, total=total_steps, disable=not main, unit="step")
    interval_start, interval_steps, interval_loss = time.perf_counter(), 0, 0.0
    try:
        while step < total_steps and not state.should_stop(config.early_stopping_patience):
            step_loss = 0.0
            for micro_step in range(accumulation):
                pixel_values, labels, _ = next(batches)
                last = micro_step == accumulation - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    logits = model(pixel_values=pixel_values.to(device)).logits
                    loss = F.cross_entropy(logits.float(), labels.to(device), weight=weights)
                    global_loss = accelerator.reduce(loss.detach(), "mean").item()
                    if not math.isfinite(global_loss):
                        stop_on_non_finite_loss(accelerator, output_dir, step + 1, global_loss)
                    accelerator.backward(loss / accumulation)
                step_loss += global_loss / accumulation
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            progress.update()
            interval_steps, interval_loss = interval_steps + 1, interval_loss + step_loss

            if step % config.log_every == 0 or step == total_steps:
                seconds = (time.perf_counter() - interval_start) / interval_steps
                metrics = {
                    "train/loss": interval_loss / interval_steps,
                    "train/lr": lr,
                    "perf/step_time_s": seconds,
                    "perf/images_per_s": config.batch_size / seconds,
                    "perf/peak_memory_gib": peak_memory_gib(device),
                }
                accelerator.log(metrics, step=step)
                progress.set_postfix(loss=f"{metrics['train/loss']:.4f}", lr=f"{lr:.2e}")
                interval_start, interval_steps, interval_loss = time.perf_counter(), 0, 0.0
            stopping = False
            if step % eval_every == 0 or step == total_steps:
                validate()
                stopping = state.should_stop(config.early_stopping_patience)
            if step % checkpoint_every == 0 or step == total_steps or stopping:
                checkpoint()
        if step < total_steps:
            logger.info(
                f"Stopped early at step {step}: {config.early_stopping_patience} validations without improvement "
                f"of {config.metric_for_best_model} since step {state.best_step}."
            )

        final_model, results = None, None
        if main:
            with accelerator.autocast():
                final_model, results = conclude(config, data, state, evaluator, zero_shot_weights, unwrapped)
            results["steps"] = step
            results["stopped_early"] = step < total_steps

        def export_final(directory: Path) -> None:
            if main:
                final_model.save_pretrained(directory)
                processor.save_pretrained(directory)
                (directory / "results.json").write_text(json.dumps(results, indent=2) + "\n")
                card = render_classifier_card(
                    results, repo_id=config.push_to_hub or f"local/{output_dir.name}", base_model=base_model_id(config)
                )
                card.save(directory / "README.md")

        final_dir = output_dir / "final"
        write_atomically(accelerator, final_dir, export_final, "the final model")
        if pusher is not None:
            pusher.push(final_dir, "UniMed-CLIP classifier, end of fine-tuning")
        accelerator.wait_for_everyone()
        return final_dir
    finally:
        progress.close()
        accelerator.end_training()
        if pusher is not None:
            pusher.close()
