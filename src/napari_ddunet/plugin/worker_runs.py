"""What both dock widgets' run controllers share: one napari worker in flight, and waiting for it.

A controller (the segmentation widget's ``RunController``, the training panel's
``TrainingController``) owns ``worker`` (None when idle), ``error`` and the handlers
``_on_event``, ``_on_returned``, ``_on_error`` and ``_on_finished``; these functions wire a worker
to them and give ``run_blocking()`` its one waiting rule for scripts, tests and the demo.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from qtpy.QtCore import QCoreApplication


class Controller(Protocol):
    worker: Any
    error: BaseException | None

    def run(self, request: Any) -> bool: ...
    def cancel(self) -> None: ...
    def _on_event(self, request: Any, event: Any) -> None: ...
    def _on_returned(self, request: Any, result: Any) -> None: ...
    def _on_error(self, request: Any, error: BaseException) -> None: ...
    def _on_finished(self, request: Any) -> None: ...


def start_worker(controller: Controller, worker: Any, request: Any) -> None:
    """Connect ``worker``'s signals to the controller's handlers for ``request`` and start it."""
    worker.yielded.connect(lambda event: controller._on_event(request, event))
    worker.returned.connect(lambda result: controller._on_returned(request, result))
    worker.errored.connect(lambda error: controller._on_error(request, error))
    worker.finished.connect(lambda: controller._on_finished(request))
    controller.worker = worker
    worker.start()


def wait_for_worker(controller: Controller, timeout_s: float = 60.0) -> None:
    """Process Qt events until the controller's worker is gone or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while controller.worker is not None and time.monotonic() < deadline:
        QCoreApplication.processEvents()
        time.sleep(0.005)


def run_to_end(controller: Controller, request: Any, timeout_s: float, what: str) -> None:
    """Start ``request`` and wait for it: ``run_blocking()``'s one rule.

    Raises RuntimeError when a run is already in flight, the run's own error, or TimeoutError (after
    cancelling) when it is still running at ``timeout_s``.
    """
    if not controller.run(request):
        raise RuntimeError("a run is already in flight")
    wait_for_worker(controller, timeout_s)
    if controller.worker is not None:
        controller.cancel()
        wait_for_worker(controller, 60.0)
        raise TimeoutError(f"{what} did not end within {timeout_s} s")
    if controller.error is not None:
        raise controller.error
