"""The up/down ensembles as the console shows and edits them: what is in force on the rig, and the edits.

Kept apart from the model so the review window (a finished session, no rig) can colour the ensembles the
session ran with using the same class.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RoleEdit:
    """The ensembles in force on the rig and the operator's edits not yet sent."""

    applied_up: list[int] = field(default_factory=list)
    applied_down: list[int] = field(default_factory=list)
    up: list[int] = field(default_factory=list)
    down: list[int] = field(default_factory=list)
    version: int = 0  # bumped on every change, so the display redraws outlines only when needed

    @property
    def pending(self) -> bool:
        return sorted(self.up) != sorted(self.applied_up) or sorted(self.down) != sorted(self.applied_down)

    def role(self, roi: int) -> str:
        if roi in self.up:
            return "up"
        if roi in self.down:
            return "down"
        return "other"

    def assign(self, roi: int, role: str) -> None:
        if role not in ("up", "down", "none", "other"):
            raise ValueError(f"unknown ROI role {role!r} (expected up, down or none)")
        if roi in self.up:
            self.up.remove(roi)
        if roi in self.down:
            self.down.remove(roi)
        if role == "up":
            self.up.append(roi)
        elif role == "down":
            self.down.append(roi)
        self.version += 1

    def set_applied(self, up: list[int], down: list[int], keep_edits: bool = False) -> None:
        had_edits = self.pending
        self.applied_up = sorted(int(i) for i in up)
        self.applied_down = sorted(int(i) for i in down)
        if not (keep_edits and had_edits):
            self.up = list(self.applied_up)
            self.down = list(self.applied_down)
        self.version += 1
