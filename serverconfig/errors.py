"""`ConfigError`: the configuration has a value the server cannot use; the message names each variable.

Every variable is parsed before any is used, and every bad one is reported at once, one line each, so an
operator fixes them in one round instead of one restart per mistake. A secret's value is never shown.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One variable the server cannot use, and why."""

    variable: str
    value: str | None  # None for secrets: their value never appears in a message
    reason: str  # completes "VARIABLE='value' ...": "is not a size; use ..."

    def __str__(self) -> str:
        shown = self.variable if self.value is None else f"{self.variable}={self.value!r}"
        return f"{shown} {self.reason}"


class ConfigError(ValueError):
    """One or more environment variables hold values the server cannot use.

    `problems` lists them in the order of the configuration table; `variables` names them.
    """

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            message = str(self.problems[0])
        else:
            lines = "\n".join(f"  {problem}" for problem in self.problems)
            message = f"{len(self.problems)} configuration variables have values the server cannot use:\n{lines}"
        super().__init__(message)

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(problem.variable for problem in self.problems)
