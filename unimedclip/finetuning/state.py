"""What a fine-tuning checkpoint keeps beside accelerate's state and the data position: the evaluation before
training, every validation so far, and early stopping's position (the best score, its step, the validations since)."""

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "finetune_state.json"


@dataclass
class RunState:
    before: dict = field(default_factory=dict)  # split -> metrics of the model training starts from
    history: list[dict] = field(default_factory=list)  # {"step": n, <metric>: value, ...} per validation
    best_score: float | None = None
    best_step: int | None = None
    since_best: int = 0  # validations without improvement since the best

    def record(self, step: int, metrics: dict, metric: str) -> bool:
        """Add a validation; True if it is the best so far (a NaN score never is)."""
        self.history.append({"step": step, **{key: metrics[key] for key in ("accuracy", "balanced_accuracy", "auc")}})
        score = metrics[metric]
        if not math.isnan(score) and (self.best_score is None or score > self.best_score):
            self.best_score, self.best_step, self.since_best = score, step, 0
            return True
        self.since_best += 1
        return False

    def should_stop(self, patience: int) -> bool:
        return patience > 0 and self.since_best >= patience

    def save(self, directory: Path) -> None:
        (directory / STATE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> "RunState":
        return cls(**json.loads((directory / STATE_FILE).read_text()))
