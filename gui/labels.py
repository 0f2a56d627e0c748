"""Display names for the decoder's integer codes (``Decision.mode`` and ``Decision.trial_state``).

The codes are defined once, in ``rig.core.codes``; the console reads their names from there. A code
this build does not know (a rig running a newer version) is shown as its number, e.g. ``mode 7``, so a
mismatch is visible on screen instead of mislabelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from rig.core.codes import Mode, TrialState


@dataclass(frozen=True)
class CodeNames:
    """Integer code -> display name for one code table."""

    kind: str
    names: dict[int, str] = field(default_factory=dict)

    def name(self, code: int) -> str:
        found = self.names.get(int(code))
        return found if found is not None else f"{self.kind} {int(code)}"

    def code(self, name: str) -> int | None:
        for value, label in self.names.items():
            if label == name:
                return value
        return None


def _names(codes: type[IntEnum]) -> dict[int, str]:
    return {int(member): member.name.lower() for member in codes}


def decoder_code_names() -> tuple[CodeNames, CodeNames]:
    """(mode names, trial-state names) from the shared code tables."""
    return CodeNames("mode", _names(Mode)), CodeNames("state", _names(TrialState))
