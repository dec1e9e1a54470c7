"""User-facing errors: each carries one line that says what is wrong and what would work."""


class DDUNetError(ValueError):
    """Base of every error caused by user input (bad file, bad option, bad image).

    The CLI turns it into one line on stderr and exit status 2; the widget into a notification.
    """


class RunIOError(DDUNetError):
    """An I/O fault during a run (disk full, a file too large, an unreadable chunk), not a bad request.

    The output store stays resumable; the CLI prints one line naming ``--resume`` and exits with status 3.
    """


class DeviceError(DDUNetError):
    """A device that does not exist or is not available on this machine."""
