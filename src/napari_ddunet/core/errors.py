"""User-facing errors: each carries one line that says what is wrong and what would work."""


class DDUNetError(ValueError):
    """Base of every error caused by user input (bad file, bad option, bad image).

    The CLI turns it into one line on stderr and exit status 2; the widget into a notification.
    """
