"""Errors a user can cause and fix; the CLI prints them without a traceback."""


class LmforgeError(Exception):
    """Base class: the message is meant for the user."""


class ModelError(LmforgeError):
    """A model file or directory is missing, corrupt or of an unsupported kind.

    One line: what a reader library said about a damaged file may span several."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class RequestError(LmforgeError, ValueError):
    """A generation request or its parameters are invalid; `param` names the culprit when known."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param
