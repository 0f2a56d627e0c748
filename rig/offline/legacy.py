"""Sessions recorded before the task rules of docs/TASK_RULES.md: replayed with the rules they ran under.

A session's ``config.resolved.json`` lists every setting its decoder ran with. Settings added later are
missing from older ones, and their defaults are the new behaviour; filling a missing key with its default
would re-decide an old session under rules it never ran under (its bad frames held, a second reward for one
crossing refused, ...), and the replay would no longer match. So before the config is read, each missing
key of :data:`LEGACY_VALUES` is filled with the value that reproduces the older behaviour, and the session
says so in its notes. docs/SESSION_FORMAT.md ("Sessions recorded before ...") is the user's description.

The newer decoder also records a few more fields (the calibration's interval and warnings, the block and
F0 mode of ``bci_start``, ...); :data:`ADDED_CALIBRATION_FIELDS` and :data:`ADDED_EVENT_FIELDS` list them,
and the replay check of a ``rules_version`` 1 session compares events and calibrations without them
(they describe, they do not decide: the threshold, every decision and every hit are still compared).
"""

from __future__ import annotations

from typing import Any

#: config key (as a path) -> the value that reproduces what a session recorded without the key did
LEGACY_VALUES: dict[tuple[str, ...], Any] = {
    ("decoder", "rules_version"): 1,  # a crossing paid again after the hold; no F0 safeguards; no drift watch
    ("decoder", "bad_frame_flags"): [],  # no flag made a frame bad: flagged frames moved F0 and the cursor
    ("decoder", "f0_mode"): "running",
    ("decoder", "calibration", "predict"): "windows",  # chance predicted on random trial-length windows
    ("task", "rtb_holds_trials"): False,  # return-to-baseline: trials ran on while unarmed
    ("decoder", "calibrate_off_loop"): False,  # auto_protocol calibrated in the loop, on the baseline's last frame
    ("decoder", "operator_calibrate_off_loop"): False,  # the operator's Calibrate computed in the loop
    ("acquisition", "extraction", "neuropil_hold_px"): 0.5,  # the neuropil read at the nearest pixel every frame
    ("acquisition", "extraction", "cell_sums"): "vectorised",  # the cells' sums in the order the compiler chose
}

#: Calibration fields (``calibration.json``) the rules_version 1 decoder did not write.
ADDED_CALIBRATION_FIELDS = ("predicted_hit_rate_ci95", "warnings", "needed_baseline_s", "dff_noise", "allowed_rois")

#: ``trial`` event -> detail fields the rules_version 1 decoder did not write.
ADDED_EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "calibrated": ("calibration",),
    "bci_start": ("f0_mode", "block"),
    "baseline_done": ("bad_frames",),
}


def fill_legacy(doc: dict[str, Any]) -> list[str]:
    """Fill the keys of :data:`LEGACY_VALUES` that ``doc`` (a resolved config) lacks; return their names."""
    filled = []
    for path, value in LEGACY_VALUES.items():
        section = doc
        for name in path[:-1]:
            inner = section.get(name)
            if not isinstance(inner, dict):
                inner = section[name] = {}
            section = inner
        if path[-1] not in section:
            section[path[-1]] = list(value) if isinstance(value, list) else value
            filled.append(".".join(path))
    return filled


def without_added_fields(record: dict[str, Any], calibration: bool = False) -> dict[str, Any]:
    """``record`` (a ``trial`` event, or a calibration with ``calibration`` True) without the fields the
    rules_version 1 decoder did not write."""
    if calibration:
        drop: tuple[str, ...] = ADDED_CALIBRATION_FIELDS
    else:
        drop = ADDED_EVENT_FIELDS.get(str(record.get("event", ""))) if record.get("kind") == "trial" else ()
        drop = drop or ()
    return {k: v for k, v in record.items() if k not in drop}
