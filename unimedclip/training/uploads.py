"""Uploads of training checkpoints to the Hub from a background thread; failures are retried, logged, never raised.

While a checkpoint waits for or is in its upload, checkpoint rotation keeps it (`pending_checkpoints`); at the end
of training, `close` waits a bounded time and names what it leaves un-uploaded.
"""

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
        self._pending: list[Path] = []  # queued or uploading, in order
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[Path, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="hub-push", daemon=True)
        self._thread.start()

    def push(self, folder: str | Path, commit_message: str) -> None:
        with self._lock:
            self._pending.append(Path(folder))
        self._queue.put((Path(folder), commit_message))

    def pending(self) -> list[Path]:
        """Folders queued or being uploaded."""
        with self._lock:
            return list(self._pending)

    def pending_checkpoints(self) -> set[Path]:
        """The checkpoint directories whose `model/` export is queued or being uploaded."""
        return {folder.parent for folder in self.pending()}

    def close(self, timeout_s: float = 600.0) -> list[Path]:
        """Wait up to `timeout_s` for the queued uploads; returns (and logs) the folders left un-uploaded. The upload
        thread is a daemon, so a hung upload does not keep the process alive."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        left = self.pending()
        if left:
            logger.error(
                f"Stopped waiting for uploads to {self.repo_id} after {timeout_s:.0f} s; not uploaded: "
                f"{', '.join(map(str, left))}. Upload them with `unimedclip publish model <folder>`."
            )
        return left

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
            with self._lock:
                self._pending.remove(folder)
