"""Write small TIFFs laid out as ScanImage writes them, for the replay tests (no ScanImage file ships here).

ScanImage 2016+ writes a BigTIFF whose bytes 16.. hold its own header — magic 0x07030301, version,
the size of the non-varying frame data ("SI.x = value" lines) and of the ROI-group JSON — followed by
that data, and then the image pages; each page's Software tag repeats the non-varying lines and its
ImageDescription holds the per-frame values. Older versions (SI 4/5) wrote classic TIFFs with
"scanimage.SI4.x = value" lines in ImageDescription. tifffile cannot write these headers, so this
module writes the BigTIFF structure directly.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_SHORT, _ASCII, _LONG, _LONG8 = 3, 2, 4, 16
_SAMPLE_FORMAT = {"u": 1, "i": 2, "f": 3}


def scanimage_lines(frame_rate_hz: float, *, volume_rate_hz: float | None = None, n_slices: int = 1) -> str:
    lines = [
        "SI.VERSION_MAJOR = 2021",
        "SI.hChannels.channelSave = 1",
        f"SI.hRoiManager.scanFrameRate = {frame_rate_hz!r}",
        f"SI.hRoiManager.scanVolumeRate = {volume_rate_hz if volume_rate_hz is not None else frame_rate_hz!r}",
        f"SI.hStackManager.numSlices = {n_slices}",
    ]
    return "\n".join(lines) + "\n"


def write_scanimage_bigtiff(path: Path, frames: np.ndarray, nonvarying: str, *, header: bool = True,
                            software_tag: bool = True) -> None:
    """``frames`` (T, Ly, Lx) as a ScanImage-style BigTIFF: with the ScanImage header after the TIFF header
    (``header``) and/or the non-varying lines in every page's Software tag (``software_tag``)."""
    _write(path, frames, bigtiff=True, si_header=nonvarying if header else None,
           software=nonvarying if software_tag else None, description=None)


def write_si4_tiff(path: Path, frames: np.ndarray, frame_rate_hz: float) -> None:
    """A classic TIFF as ScanImage 4 wrote it: "scanimage.SI4.x = value" lines in every ImageDescription."""
    lines = f"scanimage.SI4.acqNumFrames = {len(frames)}\nscanimage.SI4.scanFrameRate = {frame_rate_hz!r}\n"
    _write(path, frames, bigtiff=False, si_header=None, software=None, description=lines)


def _write(path: Path, frames: np.ndarray, *, bigtiff: bool, si_header: str | None, software: str | None,
           description: str | None) -> None:
    """Pages laid out uniformly, as ScanImage does: [description][software][image][IFD] per frame."""
    frames = np.ascontiguousarray(frames)
    T, Ly, Lx = frames.shape
    if bigtiff:
        out = bytearray(b"II" + struct.pack("<HHHQ", 43, 8, 0, 0))
        pointer_at, entry, offset_kind, count_fmt, off_fmt = 8, "<HHQ", _LONG8, "<Q", "<Q"
    else:
        out = bytearray(b"II" + struct.pack("<HI", 42, 0))
        pointer_at, entry, offset_kind, count_fmt, off_fmt = 4, "<HHI", _LONG, "<H", "<I"
    slot = 8 if bigtiff else 4
    if si_header is not None:
        data = si_header.encode() + b"\0"
        out += struct.pack("<IIII", 0x07030301, 4, len(data), 0) + data
    soft = software.encode() + b"\0" if software is not None else None
    for t in range(T):
        text = description if description is not None else (
            f"frameNumbers = {t + 1}\nframeTimestamps_sec = {t / 30.0:.6f}\n")
        desc = text.encode() + b"\0"
        desc_at = len(out)
        out += desc
        soft_at = len(out)
        if soft is not None:
            out += soft
        if len(out) % 2:
            out += b"\0"
        image_at = len(out)
        out += frames[t].tobytes()
        entries = [
            (256, _LONG, 1, Lx), (257, _LONG, 1, Ly), (258, _SHORT, 1, frames.dtype.itemsize * 8),
            (259, _SHORT, 1, 1), (262, _SHORT, 1, 1), (270, _ASCII, len(desc), desc_at),
            (273, offset_kind, 1, image_at), (277, _SHORT, 1, 1), (278, _LONG, 1, Ly),
            (279, offset_kind, 1, frames[t].nbytes),
        ]
        if soft is not None:
            entries.append((305, _ASCII, len(soft), soft_at))
        entries.append((339, _SHORT, 1, _SAMPLE_FORMAT[frames.dtype.kind]))
        ifd_at = len(out)
        struct.pack_into(off_fmt, out, pointer_at, ifd_at)
        out += struct.pack(count_fmt, len(entries))
        for tag, kind, count, value in entries:
            # every ASCII value here is longer than the value slot, so it is stored as an offset
            fmt = {_SHORT: "<H", _LONG: "<I", _LONG8: "<Q"}[kind] if kind != _ASCII else off_fmt
            out += struct.pack(entry, tag, kind, count) + struct.pack(fmt, value).ljust(slot, b"\0")
        pointer_at = len(out)
        out += struct.pack(off_fmt, 0)
    Path(path).write_bytes(bytes(out))
