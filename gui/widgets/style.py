"""Colours shared by the console's widgets (a colour-blind-safe blue/orange pair for up/down)."""

UP_RGB = (0, 160, 255)
DOWN_RGB = (255, 140, 0)
OTHER_RGBA = (150, 255, 150, 150)
SELECTED_RGB = (255, 255, 0)
CURSOR_RGB = (240, 240, 240)
THRESHOLD_RGB = (231, 76, 60)
HIT_RGB = (46, 204, 113)
MISS_RGB = (150, 150, 150)
REWARD_RGB = (52, 152, 219)
MANUAL_RGB = (155, 89, 182)
PULSE_RGB = (127, 140, 141)  # test pulses and flushes: the valve opened, not a reward
FAILED_RGB = (231, 76, 60)
LICK_RGB = (241, 196, 15)

#: Background shading per trial-state code (code 0, 1, ...), RGBA, for codes without a known name.
TRIAL_STATE_RGBA = (
    (0, 0, 0, 0),
    (52, 152, 219, 60),
    (46, 204, 113, 70),
    (231, 76, 60, 60),
    (155, 89, 182, 60),
    (241, 196, 15, 60),
    (127, 140, 141, 60),
    (26, 188, 156, 60),
)

#: Shading for the decoder's trial states by name (``decoder.trial.TrialState``); transparent = unshaded.
NAMED_STATE_RGBA = {
    "none": (0, 0, 0, 0),
    "iti": (127, 140, 141, 45),
    "trial": (52, 152, 219, 60),
    "hold": (46, 204, 113, 80),
    "timeout": (231, 76, 60, 70),
    "done": (60, 60, 60, 80),
}


def trial_state_palette(names: dict[int, str]) -> list[tuple[int, int, int, int]]:
    """RGBA per trial-state code 0..len(TRIAL_STATE_RGBA)-1: by name when the code is named, else by code."""
    return [NAMED_STATE_RGBA.get(names.get(code, ""), rgba) for code, rgba in enumerate(TRIAL_STATE_RGBA)]

OK_COLOUR = "#2ecc71"
WARN_COLOUR = "#e67e22"
ERROR_COLOUR = "#e74c3c"
INFO_COLOUR = "#34495e"  # the session-ended banner: a state, not an alarm
