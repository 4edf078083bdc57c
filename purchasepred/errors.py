"""One base error. Every command turns it into one red line and exit code 1."""


class PurchasePredError(Exception):
    """A problem the user can fix: the message names the file/value and the next step."""


class InputError(PurchasePredError):
    """The raw input cannot be read (missing, empty, unknown header, corrupt)."""


class ConfigError(PurchasePredError):
    """A configuration key or value is invalid."""


class DatasetError(PurchasePredError):
    """A prepared dataset is missing, incomplete or does not match what is expected."""


class CheckpointError(PurchasePredError):
    """A checkpoint is missing, corrupt, or belongs to another dataset."""


class Interrupted(PurchasePredError):
    """Work stopped by Ctrl-C with its state saved: exit code 130 and the command that continues it."""

    exit_code = 130

    def __init__(self, message: str, command: str = "") -> None:
        super().__init__(message)
        self.command = command
