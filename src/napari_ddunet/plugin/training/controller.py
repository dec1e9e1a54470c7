"""The training run controller: one ``training.session.train_iter`` at a time in a napari worker, and Cancel.

The trainer's generator runs in the worker thread; its events come back on the GUI thread through
:attr:`TrainingController.progressed`. Cancel sets an event that the worker checks after every
trainer event: it then closes the trainer's generator there, in the worker (best.pt of the last
improved epoch stays as it is), and the run returns None. :meth:`TrainingController.run_blocking` is
the same path, waited for, for scripts and tests.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any

from qtpy.QtCore import QObject

from napari_ddunet.plugin.worker_runs import WorkerController


def training_events(request: Any, cancel: threading.Event) -> Generator[Any, None, Any]:
    """The trainer's events; its result, or None once ``cancel`` is set (the trainer closed at that event)."""
    from training.session import train_iter

    trainer = train_iter(request)
    try:
        while True:
            try:
                event = next(trainer)
            except StopIteration as stop:
                return stop.value
            yield event
            if cancel.is_set():
                return None
    finally:
        trainer.close()


class TrainingController(WorkerController):
    """Owns the worker of the training in flight, its last event and Cancel; ``result`` is None when cancelled."""

    what = "the training"

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.cancel_event = threading.Event()
        self.last_event = None

    @property
    def result(self) -> Any:
        """The trainer's TrainingResult (None while running, or when cancelled)."""
        return self.last_result

    @property
    def cancelling(self) -> bool:
        return self.running and self.cancel_event.is_set()

    def _make_worker(self, request: Any) -> Any:
        from napari.qt.threading import create_worker

        self.last_event, self.cancel_event = None, threading.Event()
        return create_worker(training_events, request, self.cancel_event, _start_thread=False, _ignore_errors=True)

    def _stop(self) -> None:
        """Stop the trainer at its next event; best.pt of the last improved epoch is kept."""
        self.cancel_event.set()

    def best_checkpoint(self):
        """best.pt of the run (finished or cancelled) once the trainer has written it, else None."""
        if self.result is not None:
            return self.result.best_checkpoint
        return None if self.last_event is None else self.last_event.best_checkpoint

    def _on_event(self, request: Any, event: Any) -> None:
        self.last_event = event
        super()._on_event(request, event)
