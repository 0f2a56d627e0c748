"""Frame sources behind one interface (:class:`~acquisition.sources.base.FrameSource`), chosen in config."""

from __future__ import annotations

from pathlib import Path

from acquisition.config import AcquisitionConfig
from acquisition.sources.base import EndOfStream, Frame, FrameSource

__all__ = ["EndOfStream", "Frame", "FrameSource", "make_source"]


def make_source(cfg: AcquisitionConfig, *, up: list[int], down: list[int],
                seed_dir: str | Path | None = None) -> FrameSource:
    """Build (not open) the source ``cfg.source`` names. ``up``/``down`` only matter to the simulated mouse;
    ``seed_dir`` is accepted for the caller's convenience and not used by any source yet."""
    if cfg.source == "sim":
        from acquisition.sim.source import SimSource

        return SimSource(cfg.sim, frame_rate_hz=cfg.frame_rate_hz, up=up, down=down)
    if cfg.source == "replay":
        from acquisition.sources.replay import ReplaySource

        r = cfg.replay
        return ReplaySource(r.path, speed=r.speed, frame_rate_hz=r.frame_rate_hz,
                            default_frame_rate_hz=cfg.frame_rate_hz, loop=r.loop, h5_key=r.h5_key,
                            n_channels=r.n_channels, channel=r.channel, n_planes=r.n_planes, plane=r.plane)
    if cfg.source == "cloose_tcp":
        from acquisition.sources.cloose_tcp import ClooseTcpSource

        c = cfg.cloose_tcp
        return ClooseTcpSource(c.host, c.port, c.height_px, c.width_px, frame_rate_hz=cfg.frame_rate_hz,
                               byte_order=c.byte_order)
    if cfg.source == "zmq_stream":
        from acquisition.sources.zmq_stream import ZmqStreamSource

        z = cfg.zmq_stream
        expected = (z.height_px, z.width_px) if z.height_px else None
        return ZmqStreamSource(z.endpoint, bind=z.bind, topic=z.topic, plane=z.plane, channel=z.channel,
                               frame_rate_hz=cfg.frame_rate_hz, expected_shape=expected,
                               stale_after_s=z.stale_after_s)
    raise ValueError(f"`source`: unknown frame source {cfg.source!r}")
