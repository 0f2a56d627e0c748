"""Names for the decoder's integer codes (``Decision.mode`` and ``Decision.trial_state``).

The decoder owns these codes (``decoder.engine.Mode`` / ``decoder.engine.TrialState``, IntEnums). The
console reads the names from there so the two never disagree; a code the enum does not know is shown
as its number, e.g. ``mode 7``, so a mismatch is visible on screen instead of mislabelled.
"""

from __future__ import annotations

import enum
import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CodeNames:
    """Integer code -> display name for one decoder enum."""

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


def _enum_names(module_name: str, enum_name: str) -> dict[int, str]:
    module = importlib.import_module(module_name)
    cls = getattr(module, enum_name, None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, enum.IntEnum)):
        raise ImportError(f"{module_name}.{enum_name} is not an IntEnum")
    return {int(member): member.name.lower() for member in cls}


def decoder_code_names() -> tuple[CodeNames, CodeNames, str]:
    """(mode names, trial-state names, problem). ``problem`` is empty when the decoder's enums were read.

    The console still runs when they cannot be read (an older decoder build, a console attached from a
    machine with a different version): codes are then shown as numbers and ``problem`` says why, and
    the window shows that text.
    """
    try:
        modes = _enum_names("decoder.engine", "Mode")
        states = _enum_names("decoder.engine", "TrialState")
    except ImportError as exc:
        return CodeNames("mode"), CodeNames("state"), f"decoder mode/state names unavailable ({exc}); showing codes"
    return CodeNames("mode", modes), CodeNames("state", states), ""
