"""Which calls of a profiled training run make the host wait for the device (or for the other processes), per step.

    with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profile:
        train(config)
    for step, calls in enumerate(synchronising_calls_per_step(profile.events()), start=1):
        print(step, dict(calls))

On every device, reading a tensor's value on the host (`item()`, `bool()`, `int()`, `float()`: all
`aten::_local_scalar_dense`) and ops whose output shape depends on values (`nonzero`, boolean masks) wait; on CUDA
also the runtime's synchronisations, including the ones a blocking host-device copy makes; collectives wait for the
other processes. On the CPU the host is the device, so these calls cost nothing there, but they mark the places that
wait on a GPU; a tensor read with `tolist()` or `cpu()` shows no call on the CPU, so a deliberate synchronisation is
labelled with `torch.profiler.record_function` (`IntervalRecord.read`, train.py's one synchronisation).
"""

import bisect
from collections import Counter
from collections.abc import Iterable

SYNCHRONISING_OPS = frozenset({"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select"})
CUDA_SYNCHRONISATIONS = frozenset(
    {
        "cudaDeviceSynchronize",
        "cudaStreamSynchronize",
        "cudaEventSynchronize",
        "cudaMemcpy",
        "cuCtxSynchronize",
        "cuStreamSynchronize",
        "cuEventSynchronize",
        "cuMemcpyDtoH_v2",
    }
)
COLLECTIVE_PREFIXES = ("c10d::", "nccl:", "gloo:")
DELIBERATE = frozenset({"IntervalRecord.read"})  # spans that synchronise by design, counted once each
OPTIMIZER_STEP = "Optimizer.step#"  # the span torch.optim puts around every optimizer step
NEXT_BATCH = "enumerate(DataLoader)#"  # the span torch.utils.data puts around every batch fetched


def is_synchronising(name: str) -> bool:
    return name in SYNCHRONISING_OPS or name in CUDA_SYNCHRONISATIONS or name.startswith(COLLECTIVE_PREFIXES)


def _place(event) -> str:
    """Where a synchronising call was made: the deliberate span or optimizer step it is in, else its own name."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in DELIBERATE:
            return parent.name
        if parent.name.startswith(OPTIMIZER_STEP):
            return f"{parent.name} > {event.name}"
        parent = parent.cpu_parent
    return event.name


def synchronising_calls_per_step(events: Iterable) -> list[Counter]:
    """For each training step of profiled `events` (`torch.profiler.profile().events()`), the synchronising calls,
    counted by place (`_place`); a deliberate span counts once. A step runs from its first batch fetch to the next
    step's, so that it includes what follows its optimizer step (logging, checkpoints); the first step also includes
    whatever ran before the training loop."""
    events = sorted(events, key=lambda event: event.time_range.start)
    step_ends = [event.time_range.end for event in events if event.name.startswith(OPTIMIZER_STEP)]
    fetches = [event.time_range.start for event in events if event.name.startswith(NEXT_BATCH)]
    # A step ends where the first batch fetch after its optimizer step begins (the last one, with the run).
    boundaries = []
    for end in step_ends:
        following = bisect.bisect_right(fetches, end)
        boundaries.append(fetches[following] if following < len(fetches) else float("inf"))
    steps = [Counter() for _ in step_ends]
    for event in events:
        index = bisect.bisect_right(boundaries, event.time_range.start)
        if index == len(steps):
            continue
        if event.name in DELIBERATE:
            steps[index][event.name] += 1
        elif is_synchronising(event.name) and (place := _place(event)) not in DELIBERATE:
            steps[index][place] += 1
    return steps


def unexpected_waits(
    per_step: list[Counter], log_every: int, device_type: str, first_step: int = 0
) -> dict[int, dict]:
    """{step: its calls} for the steps of a train.py run (`synchronising_calls_per_step`, the first numbered
    `first_step + 1`) that wait other than as designed: a logging step (every `log_every`) makes exactly one
    `IntervalRecord.read`, the others none. The first step (setup) and the last (final checkpoint) are not judged. On
    the CPU, AdamW's reads of its step counts inside the optimizer step are host tensors and allowed; on CUDA
    train.py's fused AdamW keeps them on the device."""
    unexpected = {}
    for step, calls in enumerate(per_step[1:-1], start=first_step + 2):
        expected = {"IntervalRecord.read": 1} if step % log_every == 0 else {}
        waits = {
            place: count
            for place, count in calls.items()
            if place not in expected and not (device_type == "cpu" and place.startswith(OPTIMIZER_STEP))
        }
        if waits or any(calls.get(place) != count for place, count in expected.items()):
            unexpected[step] = dict(calls)
    return unexpected
