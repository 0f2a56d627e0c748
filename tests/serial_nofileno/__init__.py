"""A pyserial URL-handler package whose ``socket://`` ports have no ``fileno()``, like pyserial's Windows COM ports.

Put first in ``serial.protocol_handler_packages`` (:mod:`tests.rig_without_fileno` does, in every process of a
rig), it replaces pyserial's own ``socket://`` handler, so a whole-rig session on Linux takes the reward link's
Windows path: ``reward.link.ValveLink`` finds no descriptor to select on, so it reads the port on a reader thread
whose wake-up socket (``ValveLink.fileno()``) wakes the reward process's poller, as for a COM port. No production
code knows about this package.
"""

from __future__ import annotations

#: What a port of this package prints to stderr when asked for its descriptor: the proof the path was taken
#: (pyserial silently falls back to its own handler if this package cannot be imported).
REFUSED = "fileno() refused, as on a Windows COM port"
