"""Uploads of training checkpoints to the Hub from a background thread; failures are retried, logged, never raised."""

import logging
import queue
import threading
import time
from pathlib import Path

from huggingface_hub import HfApi

from ..release.hub import push_folder_to_hub

logger = logging.getLogger(__name__)


class BackgroundPusher:
    """Uploads folders one at a time, in submission order, with `attempts` tries each and exponential backoff."""

    def __init__(self, repo_id: str, api: HfApi | None = None, attempts: int = 3, backoff_s: float = 10.0):
        self.repo_id, self.api, self.attempts, self.backoff_s = repo_id, api, attempts, backoff_s
        self.failed: list[Path] = []
        self._queue: queue.Queue[tuple[Path, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="hub-push", daemon=True)
        self._thread.start()

    def push(self, folder: str | Path, commit_message: str) -> None:
        self._queue.put((Path(folder), commit_message))

    def close(self) -> None:
        """Wait for the queued uploads to finish (or fail)."""
        self._queue.put(None)
        self._thread.join()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            folder, message = item
            for attempt in range(1, self.attempts + 1):
                try:
                    push_folder_to_hub(folder, self.repo_id, commit_message=message, api=self.api)
                    logger.info(f"Uploaded {folder} to {self.repo_id}.")
                    break
                except Exception as error:  # an upload must never stop training, whatever went wrong
                    logger.warning(f"Upload of {folder} to {self.repo_id}, attempt {attempt}/{self.attempts}: {error}")
                    if attempt < self.attempts:
                        time.sleep(self.backoff_s * 2 ** (attempt - 1))
            else:
                self.failed.append(folder)
                logger.error(f"Gave up uploading {folder} to {self.repo_id} after {self.attempts} attempts.")
