"""Plane indices and volume numbers for the streaming sources (multi-plane acquisition, docs/PLANES.md).

Why one helper: the framed streams (ZeroMQ, framed TCP) and Scanbox all receive a plane index and a planes
count from the scope side, and must treat a wrong one the same way: the frame is never dropped here (the
acquisition counts a plane out of range, so nothing is lost silently), the source counts and warns.
A stream's frames of one volume share one number: :class:`VolumeNumbers` tells the sources' own number
sanitising (gaps, restarts, broken counters) to run once per volume, not once per plane.
"""

from __future__ import annotations

from collections.abc import Callable

#: the most planes per volume a header may announce; beyond it the count is taken as garbage
MAX_PLANES = 16
#: a repeated warning goes out the first time, then every this many times
WARN_EVERY = 100


class PlaneCheck:
    """Counts frames whose plane or planes count is wrong, and warns (first, then every 100th) through ``warn``
    about a wrong count; a plane out of range is only counted here (the acquisition warns about it).

    ``n_planes`` is the source's (the configured ``acquisition.n_planes``, or one plane when a single plane is
    selected). Counters (added to the source's stats): ``plane_out_of_range``, ``bad_planes_count``,
    ``planes_mismatch``."""

    def __init__(self, source: str, n_planes: int, warn: Callable[[str, str], None], *,
                 one_selected: bool = False) -> None:
        """``one_selected``: the source keeps one plane of the volume (so the header's count is not the rig's)."""
        self._source = source
        self._one_selected = one_selected
        self.n_planes = int(n_planes)
        self._warn = warn
        self.counts = {"plane_out_of_range": 0, "bad_planes_count": 0, "planes_mismatch": 0, "frames_not_volumes": 0}
        self._shapes: dict[int, tuple[int, int]] = {}  # the last frame size seen on each plane

    def check(self, what: str, plane: int, planes: int | None) -> None:
        """Check one frame (``what`` names it in warnings) whose header says ``plane`` of ``planes``
        (None: the header has no planes count)."""
        if planes is not None:
            if not 1 <= planes <= MAX_PLANES:
                self._count("bad_planes_count", f"{what}: the header's planes-per-volume count is {planes}, not "
                                                f"within 1..{MAX_PLANES}; the frame is kept as plane {plane}")
            elif planes != self.n_planes and not self._one_selected:
                self._count("planes_mismatch", f"{what}: the header says {planes} planes per volume, the rig is "
                                               f"configured for {self.n_planes} ([acquisition] n_planes)")
        if not 0 <= plane < self.n_planes:
            # counted only: the acquisition warns about it (and writes the event) with the same code, once
            self.counts["plane_out_of_range"] += 1

    def frame_counter(self, what: str, plane: int) -> None:
        """The sender gave plane ``plane`` the number after its previous plane's: it numbers frames, so each
        plane would look like it lost every other volume. Warned (the frames are delivered as numbered)."""
        self._count("frames_not_volumes", f"{what}: plane {plane} has the number after the previous plane's, so the "
                                          "sender numbers frames, not volumes; send the volume number (frame // "
                                          "planes) for every plane of a volume (docs/FRAME_STREAM.md)")

    def check_shape(self, plane: int, shape: tuple[int, int]) -> None:
        """Warn when a plane's frames change size to one no other plane has (planes that disagree in size);
        the frame is delivered all the same: the acquisition checks each plane against its own ROI set."""
        if self._shapes.get(plane) == shape:
            return
        self._shapes[plane] = shape
        others = {p: s for p, s in self._shapes.items() if p != plane and s != shape}
        if others and len(others) == len(self._shapes) - 1:
            seen = ", ".join(f"plane {p}: {s[0]}x{s[1]}" for p, s in sorted(others.items()))
            self._warn("planes_differ_in_size", f"{self._source}: plane {plane}'s frames are {shape[0]}x{shape[1]}, "
                                                f"the other planes' differ ({seen}); each plane is checked "
                                                "against its own ROI set")

    def _count(self, code: str, message: str) -> None:
        self.counts[code] += 1
        n = self.counts[code]
        if n == 1 or n % WARN_EVERY == 0:
            self._warn(code, f"{self._source}: {message} ({n} so far)")

    def stats(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.counts.items()}


class VolumeNumbers:
    """Which frames start a new volume, so a source numbers volumes, not frames.

    A frame continues the current volume when it carries the same published volume number as the previous
    frame and a higher plane; anything else (the next volume, a gap, a number that went back, a plane that
    went back within one number: a restarted sender) goes through the source's numbering as a new volume."""

    def __init__(self) -> None:
        self._published: int | None = None
        self._plane = -1
        self.number = -1  # the number delivered for the current volume

    def counts_frames(self, published: int, plane: int) -> bool:
        """The next plane of a volume arrived with the next number: the sender numbers frames, not volumes."""
        return self._published is not None and plane > 0 and published == self._published + 1 \
            and plane == self._plane + 1

    def continues(self, published: int, plane: int) -> bool:
        return self._published is not None and published == self._published and plane > self._plane

    def update(self, published: int, plane: int, number: int) -> None:
        self._published, self._plane, self.number = published, plane, number
