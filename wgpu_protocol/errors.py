"""The protocol's exceptions, under one root.

    ProtocolError               root: a frame or value that breaks the protocol (ValueError);
    │                           `code` is stable and machine readable (an `error` reply says it)
    └── ModelSpecError          model requirements or an inventory ({folder: [file, ...]})
                                that are not valid (models.py)

Both sides raise them only from pure checks: nothing here does I/O.
"""

from __future__ import annotations


class ProtocolError(ValueError):
    """A frame that is not a valid message. `code` is stable and machine readable."""

    def __init__(self, message: str, code: str = "bad_message") -> None:
        super().__init__(message)
        self.code = code
