"""What both dock widgets' run controllers share: one napari worker in flight, its signals, and waiting for it.

:class:`WorkerController` is the base of the segmentation widget's ``RunController`` and the training
panel's ``TrainingController``. A subclass says how to make the worker of a request
(:meth:`WorkerController._make_worker`) and how to ask it to stop (:meth:`WorkerController._stop`);
this class wires the worker's signals to its own on the GUI thread and gives ``run_blocking()`` its
one waiting rule for scripts, tests and the demo.
"""

from __future__ import annotations

import time
from typing import Any

from qtpy.QtCore import QCoreApplication, QObject, Signal


class WorkerController(QObject):
    """Owns the worker of the run in flight (``worker``, None when idle), its request, result and error."""

    #: (request) emitted on the GUI thread when a run starts.
    started = Signal(object)
    #: (request, event) for every event the worker yields, on the GUI thread.
    progressed = Signal(object, object)
    #: (request, result) when the worker's generator returns, cancelled or not.
    returned = Signal(object, object)
    #: (request, exception) when the run fails.
    failed = Signal(object, object)
    #: (request) after returned/failed, when the worker is gone.
    finished = Signal(object)

    #: how a timeout of :meth:`run_blocking` names the run
    what = "the run"

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.worker: Any = None
        self.request: Any = None
        self.last_result: Any = None
        self.error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self.worker is not None

    def run(self, request: Any) -> bool:
        """Start ``request`` in a worker thread; False when a run is already in flight."""
        if self.worker is not None:
            return False
        self.request, self.last_result, self.error = request, None, None
        worker = self._make_worker(request)
        worker.yielded.connect(lambda event: self._on_event(request, event))
        worker.returned.connect(lambda result: self._on_returned(request, result))
        worker.errored.connect(lambda error: self._on_error(request, error))
        worker.finished.connect(lambda: self._on_finished(request))
        self.worker = worker
        # The worker starts first: what ``started``'s handlers build on the GUI thread then overlaps the
        # run instead of delaying it (worker events queue behind those handlers).
        worker.start()
        self.started.emit(request)
        return True

    def run_blocking(self, request: Any, timeout_s: float = 3600.0) -> Any:
        """:meth:`run` and wait (processing Qt events) for its end; returns what the worker returned.

        Raises RuntimeError when a run is already in flight, the run's own error, or TimeoutError (after
        cancelling) when it is still running at ``timeout_s``.
        """
        if not self.run(request):
            raise RuntimeError("a run is already in flight")
        self.wait(timeout_s)
        if self.worker is not None:
            self.cancel()
            self.wait(60.0)
            raise TimeoutError(f"{self.what} did not end within {timeout_s} s")
        if self.error is not None:
            raise self.error
        return self.last_result

    def wait(self, timeout_s: float = 60.0) -> None:
        """Process Qt events until the run in flight ends or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while self.worker is not None and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            time.sleep(0.005)

    def cancel(self) -> None:
        """Ask the run in flight to stop at its next event."""
        if self.worker is not None:
            self._stop()

    def _make_worker(self, request: Any) -> Any:
        """A napari worker (not started) whose generator runs ``request``."""
        raise NotImplementedError

    def _stop(self) -> None:
        """Tell the worker's generator to stop at its next event."""
        raise NotImplementedError

    def _on_event(self, request: Any, event: Any) -> None:
        self.progressed.emit(request, event)

    def _on_returned(self, request: Any, result: Any) -> None:
        self.last_result = result
        self.returned.emit(request, result)

    def _on_error(self, request: Any, error: BaseException) -> None:
        self.error = error
        self.failed.emit(request, error)

    def _on_finished(self, request: Any) -> None:
        self.worker = None
        self.finished.emit(request)
