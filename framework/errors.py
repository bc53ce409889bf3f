"""Errors a user can act on. The CLI prints their message without a traceback."""


class UserError(Exception):
    """Base class: the message alone must tell the user what to change."""


class ConfigError(UserError):
    """A config key is unknown, unset (``???``), of the wrong type or inconsistent."""


class CorpusError(UserError):
    """A corpus folder is missing or does not have the expected layout."""


class AudioError(UserError):
    """An audio file cannot be used. ``path`` names it, ``reason`` says why (one line)."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class CheckpointError(UserError):
    """A checkpoint is missing, damaged, or belongs to another problem."""
