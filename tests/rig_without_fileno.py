"""``python -m tests.rig_without_fileno run CONFIG ...``: ``rig`` whose ``socket://`` serial ports have no fileno.

The handler package is registered at import, and ``multiprocessing``'s spawn start method re-imports the main
module in every child (as ``__mp_main__``): the reward process opens its port with it, not only the supervisor.
"""

from __future__ import annotations

import sys

import serial

if "tests.serial_nofileno" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.insert(0, "tests.serial_nofileno")

if __name__ == "__main__":
    from rig.app.cli import main

    sys.exit(main())
