"""The real-time path never imports torch or suite2p (seconds of import, GPU probing, thread pools)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "suite2p", "cellpose")
REAL_TIME = ("rig.app.supervisor", "rig.app.cli", "acquisition.process", "decoder.process", "reward.process")


def test_real_time_processes_import_neither_torch_nor_suite2p():
    code = (f"import sys\nfor m in {REAL_TIME!r}: __import__(m)\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "", f"the real-time path imported: {out.stdout.strip()}"
