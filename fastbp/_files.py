"""Files written whole or not at all: a model, a checkpoint or a prediction is never seen
half-written, whenever the writing process is interrupted or killed."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat


@contextlib.contextmanager
def replacing(path: str | os.PathLike):
    """A new binary file, open for writing, that replaces ``path`` when the block ends
    without an error; on an error or an interruption it is removed and ``path`` stays as
    it was, so ``path`` is never seen half-written (it is renamed into place at once).

    The file gets the mode an ordinary new file gets (``0o666`` less the umask) or, when
    ``path`` exists, keeps that file's mode. Errors name ``path``, not the temporary file.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temporary = os.path.join(directory, f".fastbp-{secrets.token_hex(6)}.tmp")
        try:
            handle = os.open(temporary, flags, 0o666)  # the umask applies, as for any file
            break
        except FileExistsError:
            continue
        except OSError as error:
            raise type(error)(error.errno, error.strerror, path) from None
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        try:
            os.replace(temporary, path)
        except OSError as error:
            raise type(error)(error.errno, error.strerror, path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
