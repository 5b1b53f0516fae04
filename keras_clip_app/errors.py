"""The application's error for problems a user can fix.

`RunError` carries one line that names what was expected, what arrived
and the fix; `keras-clip` prints it without a traceback (`--debug` shows
one) and exits non-zero. It is a `ValueError`, so Python callers that
catch the library's `ValueError`s catch it too.
"""


class RunError(ValueError):
    """Bad input, files or settings, said in one line with its fix."""
