"""The child process of ``rig detect``: runs suite2p (registration, detection, extraction, classification).

Why a separate process: suite2p imports torch (hundreds of MB, seconds to import, its own thread pools);
the rig's processes and ``rig`` itself never import it, and a crash inside suite2p cannot take the
caller with it. ``python -m rig.offline.detect_worker JOB.json``; ``JOB.json`` is written by
:func:`rig.offline.detect.prepare`. Progress goes to stdout as JSON lines prefixed with ``@rig``; suite2p's
own prints go to stderr. Exit 0: done; 3: suite2p found no ROI (the message says with which settings).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

#: prefix of the progress lines this worker prints (the parent ignores every other line)
TAG = "@rig "
EXIT_NO_ROIS = 3

#: suite2p's log lines that start a stage, and the name shown to the operator
STAGES = {"REGISTRATION": "registration", "ROI DETECTION": "detection", "EXTRACTION": "extraction",
          "SPIKE DECONVOLUTION": "deconvolution", "ROI CLASSIFICATION": "classification"}


def emit(**fields: Any) -> None:
    """One progress line for the parent."""
    sys.stdout.write(TAG + json.dumps(fields) + "\n")
    sys.stdout.flush()


class _Forward(logging.Handler):
    """suite2p's log messages to the parent: a stage start as ``stage``, the rest as ``log``."""

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        for marker, stage in STAGES.items():
            if msg.startswith("-----------") and marker in msg:
                emit(stage=stage)
                return
        emit(log=msg)


def run(job: dict[str, Any]) -> int:
    emit(stage="import")
    import suite2p  # noqa: PLC0415 - the heavy import happens here, in this process only
    import torch  # noqa: PLC0415

    torch.set_num_threads(int(job.get("threads", 1)))
    log = logging.getLogger("suite2p")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(_Forward())
    plane = Path(job["plane"])
    db = {**suite2p.default_db(), "data_path": [str(plane)], "save_path0": str(plane.parent.parent),
          "save_folder": plane.parent.name, "save_path": str(plane), "fast_disk": str(plane),
          "reg_file": str(plane / "data.bin"), "nframes": int(job["nframes"]), "Ly": int(job["Ly"]),
          "Lx": int(job["Lx"]), "keep_movie_raw": False, "nchannels": 1}
    settings = suite2p.default_settings()
    settings["torch_device"] = "cpu"
    settings["fs"] = float(job["fs"])
    settings["tau"] = float(job["tau"])
    settings["diameter"] = [float(job["diameter"])] * 2
    settings["run"]["do_regmetrics"] = False  # PC metrics: minutes on a long movie, not needed to pick cells
    settings["io"]["combined"] = False
    # the reference image from at most half the movie: 400 frames (suite2p's default) of a 300-frame movie is all of it
    settings["registration"]["nimg_init"] = int(min(400, max(50, int(job["nframes"]) // 2)))
    settings["detection"]["algorithm"] = job["algorithm"]
    settings["detection"]["threshold_scaling"] = float(job["threshold_scaling"])
    try:
        suite2p.run_plane(db, settings)
    except ValueError as exc:
        if "no ROIs" in str(exc):  # suite2p's detection found nothing: say so, not as a crash
            emit(error="no_rois", message=str(exc))
            return EXIT_NO_ROIS
        raise
    if not (plane / "stat.npy").is_file():
        emit(error="no_rois", message="suite2p wrote no stat.npy")
        return EXIT_NO_ROIS
    emit(stage="done")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m rig.offline.detect_worker JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    return run(job)


if __name__ == "__main__":
    sys.exit(main())
