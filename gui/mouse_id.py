"""Ask the operator for the mouse ID before a live session is created (it names the session folder)."""

from __future__ import annotations

import re

#: What a mouse ID may contain: it goes into a folder name on Windows and Linux alike.
VALID_MOUSE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def ask_mouse_id(rig_name: str) -> str | None:
    """A small dialog; the entered ID, or None when the operator cancels. Re-asks until the ID is usable."""
    from PyQt6 import QtWidgets  # noqa: PLC0415 - only when a console session starts

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["rig"])
    prompt = f"Mouse ID for this session on {rig_name}:"
    while True:
        text, ok = QtWidgets.QInputDialog.getText(None, "bci-rig: which mouse?", prompt)
        if not ok:
            return None
        text = text.strip()
        if VALID_MOUSE_ID.fullmatch(text):
            app.processEvents()
            return text
        prompt = (f"'{text}' cannot name a session folder: use letters, digits, '_', '.' or '-'.\n"
                  f"Mouse ID for this session on {rig_name}:")
