"""Ctrl-C (SIGINT) and SIGTERM as a request to stop at the end of the current step, so the training loop can save a
checkpoint of that step first. (SIGTERM is how preemptible cloud VMs and TPU pods stop a job.) A second signal while
stopping raises KeyboardInterrupt at once.

  with StopRequest() as stop:
    for step in ...:
      ...
      if stop.requested: break
"""

from __future__ import annotations

import signal
import threading


class Interrupted(Exception):
  """The run stopped on a signal after saving its checkpoint; the message is one line."""


class StopRequest:
  """Catches SIGINT and SIGTERM while active (main thread only; elsewhere it never triggers)."""

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.requested: str | None = None  # the signal's name once one arrived
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.requested:
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
