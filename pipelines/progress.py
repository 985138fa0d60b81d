"""How a long pipeline step reports progress: told its total once, then advanced as it goes.

The CLI's progress bar and the lifecycle's quiet log line both have this shape.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, n: int) -> None:
        """``n`` more items done."""
        ...

    def set_total(self, n: int) -> None:
        """How many items there are in all (known once the step has looked)."""
        ...
