"""Errors a user can cause and fix; the CLI prints them without a traceback."""


class LmforgeError(Exception):
    """Base class: the message is meant for the user."""


class ModelError(LmforgeError):
    """A model file or directory is missing, corrupt or of an unsupported kind."""


class RequestError(LmforgeError, ValueError):
    """A generation request or its parameters are invalid."""
