"""Widgets of the operator console (each reads a :class:`gui.model.ConsoleModel`, none owns a socket)."""
