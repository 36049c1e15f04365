"""Error types the CLI turns into one readable message and an exit code.

`InputError` is the user's to fix (exit 2): it names the file, the field path, the value and what
was expected. `SimulationError` is a runtime failure (exit 1), e.g. a solver that found no solution,
and names the round and molecule.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["InputError", "SimulationError", "did_you_mean"]


class InputError(ValueError):
    """Bad user input: a file, field, value or option that cannot be used as given."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 value: object = None, problems: list[str] | None = None):
        self.file = file
        self.field = field
        self.value = value
        self.problems = problems or []
        head = ": ".join(p for p in (file, field) if p)
        text = f"{head}: {message}" if head else message
        if self.problems:
            text = text + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(text)


class SimulationError(RuntimeError):
    """A failure while simulating (solver status, numerical trouble), naming where it happened."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
