"""The application: the rig command line, the supervisor, the whole-rig config and the process table.

Sits above the process packages and imports them; nothing below imports it.
"""
