"""Offline tools on a recorded session: replay, report, NWB export, summary, the session loader and the bench.

Sit above the process packages (replay runs the decoder core itself); nothing below imports them.
"""
