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

from qtpy.QtCore import QObject, Signal

from napari_ddunet.plugin.worker_runs import run_to_end, start_worker, wait_for_worker


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


class TrainingController(QObject):
    """Owns the worker of the training in flight, its last event and Cancel."""

    #: (request) on the GUI thread when a run starts.
    started = Signal(object)
    #: (request, TrainingEvent) for every trainer event, on the GUI thread.
    progressed = Signal(object, object)
    #: (request, TrainingResult or None when cancelled) when the trainer returns.
    returned = Signal(object, object)
    #: (request, exception) when the run fails.
    failed = Signal(object, object)
    #: (request) after returned/failed, when the worker is gone.
    finished = Signal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.worker = None
        self.request = None
        self.cancel_event = threading.Event()
        self.last_event = None
        self.result = None
        self.error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self.worker is not None

    @property
    def cancelling(self) -> bool:
        return self.running and self.cancel_event.is_set()

    def run(self, request: Any) -> bool:
        """Start ``request`` (a TrainingRequest) in a worker thread; False when a run is in flight."""
        from napari.qt.threading import create_worker

        if self.worker is not None:
            return False
        self.request, self.last_event, self.result, self.error = request, None, None, None
        self.cancel_event = threading.Event()
        worker = create_worker(training_events, request, self.cancel_event, _start_thread=False,
                               _ignore_errors=True)
        start_worker(self, worker, request)
        self.started.emit(request)
        return True

    def run_blocking(self, request: Any, timeout_s: float = 3600.0):
        """:meth:`run` and wait (processing Qt events) for its end; the trainer's result (None: cancelled)."""
        run_to_end(self, request, timeout_s, "the training")
        return self.result

    def wait(self, timeout_s: float = 60.0) -> None:
        """Process Qt events until the run in flight ends or ``timeout_s`` passes."""
        wait_for_worker(self, timeout_s)

    def cancel(self) -> None:
        """Stop the trainer at its next event; best.pt of the last improved epoch is kept."""
        if self.worker is not None:
            self.cancel_event.set()

    def best_checkpoint(self):
        """best.pt of the run (finished or cancelled) once the trainer has written it, else None."""
        if self.result is not None:
            return self.result.best_checkpoint
        return None if self.last_event is None else self.last_event.best_checkpoint

    def _on_event(self, request: Any, event: Any) -> None:
        self.last_event = event
        self.progressed.emit(request, event)

    def _on_returned(self, request: Any, result: Any) -> None:
        self.result = result
        self.returned.emit(request, result)

    def _on_error(self, request: Any, error: BaseException) -> None:
        self.error = error
        self.failed.emit(request, error)

    def _on_finished(self, request: Any) -> None:
        self.worker = None
        self.finished.emit(request)
