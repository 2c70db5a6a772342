"""Specific exceptions with messages that tell the user what to do.

The CLI turns every ``HrnnError`` into a one-line message and a non-zero exit code (no traceback).
"""


class HrnnError(Exception):
    """Base class: an error the user can act on."""


class ConfigError(HrnnError):
    """The configuration file or an override is invalid."""


class ContractError(HrnnError):
    """A file breaks the data contract as a whole (missing required column, empty, unreadable).

    The message names the file and the column or problem.
    """

    def __init__(self, path: object, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class DatasetError(HrnnError):
    """A dataset cannot be fetched, found or converted."""


class WarehouseError(HrnnError):
    """The warehouse is missing, locked by another writer, or inconsistent."""
