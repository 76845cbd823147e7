"""Keep a child process running: `serve --with-worker` restarts its worker when it dies, with back-off.

Without it, a worker killed by the OOM killer or a crash left the embedded service accepting jobs that nothing
would run, while `/health` said all was well. The supervisor restarts the worker after 1 s, doubling the wait
for each death in a row up to a minute, and starts counting again once a worker has stayed up for five
minutes (a worker that cannot start at all does not spin).
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 60.0
STABLE_AFTER_S = 300.0
POLL_S = 0.5


class Supervisor(threading.Thread):
    """Runs `start()` (which returns a started Popen) and starts it again whenever the process exits."""

    def __init__(self, start: Callable[[], subprocess.Popen], name: str = "worker") -> None:
        super().__init__(name=f"supervise-{name}", daemon=True)
        self._start = start
        self.label = name
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        delay = FIRST_DELAY_S
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    return
                self.process = self._start()
            began = time.monotonic()
            while not self._stop.is_set():
                try:
                    self.process.wait(timeout=POLL_S)  # returns the moment it exits
                    break
                except subprocess.TimeoutExpired:
                    continue
            if self._stop.is_set():
                return
            if time.monotonic() - began >= STABLE_AFTER_S:
                delay = FIRST_DELAY_S
            log.error("the %s process exited with status %s; starting it again in %.0f s", self.label,
                      self.process.returncode, delay)
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, MAX_DELAY_S)
            self.restarts += 1

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop supervising and end the process (SIGTERM, then SIGKILL after `timeout_s`)."""
        with self._lock:
            self._stop.set()
            process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
