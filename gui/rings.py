"""Fixed-capacity column rings: the console's only per-frame storage, allocated once.

A ring never grows: when full, the oldest row is overwritten. Writers take a row index with
:meth:`ColumnRing.advance` and assign into the columns; readers copy out the valid rows in time order
at display rate (a few times per second), which is the only place the console allocates per update.
"""

from __future__ import annotations

import numpy as np


class ColumnRing:
    """Named numpy columns sharing one write position."""

    def __init__(self, capacity: int, columns: dict[str, np.dtype | type]) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.columns: dict[str, np.ndarray] = {
            name: np.zeros(self.capacity, dtype=dtype) for name, dtype in columns.items()
        }
        self.total = 0  # rows ever written

    def advance(self) -> int:
        """The index of the next row to fill (overwriting the oldest when full)."""
        index = self.total % self.capacity
        self.total += 1
        return index

    def __len__(self) -> int:
        return min(self.total, self.capacity)

    def clear(self) -> None:
        self.total = 0

    def last_index(self) -> int:
        if self.total == 0:
            raise IndexError("the ring is empty")
        return (self.total - 1) % self.capacity

    def last(self, name: str) -> float:
        return self.columns[name][self.last_index()].item()

    def ordered(self, name: str, newest: int | None = None) -> np.ndarray:
        """A copy of column ``name``, oldest first; only the ``newest`` rows when given."""
        n = len(self)
        if newest is not None:
            n = min(n, newest)
        col = self.columns[name]
        if n == 0:
            return col[:0].copy()
        end = self.total % self.capacity  # one past the newest row
        start = (end - n) % self.capacity
        if start < end:
            return col[start:end].copy()
        return np.concatenate((col[start:], col[:end]))

    def nbytes(self) -> int:
        return sum(col.nbytes for col in self.columns.values())
