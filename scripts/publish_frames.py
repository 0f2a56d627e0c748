#!/usr/bin/env python3
"""Reference publisher for the bci-rig frame stream (docs/FRAME_STREAM.md): streams a movie file over ZeroMQ.

Use it to test a rig without a scope, or copy :func:`send_frame` into the script that runs beside your scope
software: it needs only numpy and pyzmq. Each frame goes out as one multipart message::

    [b"frame", b'{"v":1,"frame":17,"t":0.5667,"shape":[512,512],"dtype":"uint16","order":"C",
                  "plane":0,"channel":0}', <raw pixel bytes>]

Examples::

    python scripts/publish_frames.py movie.tif                       # bind tcp://*:5570, file's frame rate
    python scripts/publish_frames.py movie.npy --rate 30 --loop
    python scripts/publish_frames.py data.bin --fast --count 1000    # as fast as possible
    python scripts/publish_frames.py volumes.tif --planes 2 --rate 15 # 2 interleaved planes, 15 volumes/s

Several planes (``--planes N``): the movie's frames are the planes of each volume in turn (frame i is plane
i % N of volume i // N, as a ScanImage fast-z TIFF without flyback frames). Every plane's frame goes out with
``plane``, ``planes`` = N and ``volume``, its ``frame`` the volume number (docs/FRAME_STREAM.md, "Several
planes"); ``--rate`` is then volumes per second (each plane's rate, the rig's ``frame_rate_hz``), the planes of
a volume one plane period apart; ``--count`` counts volumes; a last, incomplete volume is not sent (said on
stderr). The rig side sets ``[acquisition] n_planes = N``.

The rig side: ``[acquisition] source = "zmq_stream"`` with ``zmq_stream.endpoint = "tcp://SCOPE_PC:5570"``.
The last stdout line is JSON: frames sent, seconds, frames per second (and volumes sent with ``--planes``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import zmq


def send_frame(sock: zmq.Socket, image: np.ndarray, frame_number: int, scope_time_s: float, *,
               topic: bytes = b"frame", plane: int = 0, channel: int = 0, order: str = "C",
               planes: int | None = None, volume: int | None = None) -> None:
    """Publish one frame. ``order="F"`` sends column-major bytes (what MATLAB's ``img(:)`` gives). Several
    planes: ``planes`` per volume and the ``volume`` number go into the header when given (the rig then numbers
    by volume, so every plane of one volume must carry the same one)."""
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    little = image.astype(image.dtype.newbyteorder("<"), copy=False)
    pixels = np.asfortranarray(little) if order == "F" else np.ascontiguousarray(little)
    header = {"v": 1, "frame": int(frame_number), "t": float(scope_time_s),
              "shape": [int(image.shape[0]), int(image.shape[1])], "dtype": little.dtype.name,
              "order": order, "plane": int(plane), "channel": int(channel)}
    if planes is not None:
        header["planes"] = int(planes)
    if volume is not None:
        header["volume"] = int(volume)
    sock.send_multipart([topic, json.dumps(header).encode(), memoryview(pixels.reshape(-1, order="A"))],
                        copy=False)


def wait_for_subscriber(sock: zmq.Socket, timeout_s: float) -> bool:
    """Block until a subscriber joins (XPUB delivers its subscription), so the first frames are not lost."""
    if sock.poll(int(timeout_s * 1000)):
        sock.recv()  # the subscription message
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("movie", help=".tif/.tiff, suite2p data.bin (with ops.npy), .npy or .h5")
    parser.add_argument("--endpoint", default="tcp://*:5570", help="ZeroMQ endpoint (default tcp://*:5570)")
    parser.add_argument("--connect", action="store_true", help="connect to the endpoint instead of binding it")
    parser.add_argument("--rate", type=float, default=0.0, help="frames per second (default: the file's, else 30)")
    parser.add_argument("--fast", action="store_true", help="send as fast as possible")
    parser.add_argument("--loop", action="store_true", help="start over at the end of the movie")
    parser.add_argument("--count", type=int, default=0,
                        help="stop after this many frames, volumes with --planes (0: the whole movie)")
    parser.add_argument("--order", choices=("C", "F"), default="C", help="pixel order on the wire")
    parser.add_argument("--topic", default="frame")
    parser.add_argument("--plane", type=int, default=0, help="the plane index of a single-plane stream")
    parser.add_argument("--planes", type=int, default=1, metavar="N",
                        help="the movie interleaves N planes per volume (1 to 16; default 1): each frame is sent "
                             "with plane, planes and volume")
    parser.add_argument("--channel", type=int, default=0)
    parser.add_argument("--h5-key", default="")
    parser.add_argument("--wait-subscriber", type=float, default=10.0, metavar="SECONDS",
                        help="wait this long for a subscriber before sending (0: do not wait)")
    args = parser.parse_args(argv)
    if not 1 <= args.planes <= 16:
        parser.error(f"--planes must be within 1..16 (got {args.planes})")
    if args.planes > 1 and args.plane != 0:
        parser.error("--plane names the plane of a single-plane stream; with --planes each frame's plane is its "
                     "place in the volume")

    from acquisition.sources.movie import MovieError, open_movie  # the rig's movie readers

    try:
        reader = open_movie(args.movie, h5_key=args.h5_key)
    except MovieError as exc:
        print(f"publish_frames: {exc}", file=sys.stderr)
        return 2
    rate = args.rate or reader.frame_rate_hz or 30.0  # volumes per second with --planes
    planes = args.planes
    volumes_in_movie = reader.n_frames // planes
    if volumes_in_movie == 0:
        print(f"publish_frames: {args.movie}: {reader.n_frames} frames, fewer than one volume of {planes} planes",
              file=sys.stderr)
        reader.close()
        return 2
    if reader.n_frames % planes:
        print(f"publish_frames: {args.movie}: {reader.n_frames} frames is not a whole number of {planes}-plane "
              f"volumes; the last {reader.n_frames % planes} frame(s) are not sent", file=sys.stderr, flush=True)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.SNDHWM, 64)
    sock.setsockopt(zmq.LINGER, 2000)
    if args.connect:
        sock.connect(args.endpoint)
    else:
        sock.bind(args.endpoint)
    print(f"publish_frames: {args.movie}: {reader.n_frames} frames of {reader.shape[0]}x{reader.shape[1]} "
          f"{reader.dtype}, on {sock.getsockopt(zmq.LAST_ENDPOINT).decode()}", file=sys.stderr, flush=True)
    if args.wait_subscriber > 0 and not wait_for_subscriber(sock, args.wait_subscriber):
        print(f"publish_frames: no subscriber within {args.wait_subscriber:g} s", file=sys.stderr)
        return 1
    buf = np.empty(reader.shape, reader.dtype)
    usable = volumes_in_movie * planes  # frames of whole volumes
    total = args.count * planes or (usable if not args.loop else 0)
    sent = 0
    t0 = time.perf_counter()
    try:
        while total == 0 or sent < total:
            index = sent % usable
            if not args.loop and sent >= usable:
                break
            if not args.fast:
                delay = t0 + sent / (rate * planes) - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            reader.read_into(index, buf)
            if planes == 1:
                send_frame(sock, buf, sent, sent / rate, topic=args.topic.encode(), plane=args.plane,
                           channel=args.channel, order=args.order)
            else:
                volume = sent // planes
                send_frame(sock, buf, volume, sent / (rate * planes), topic=args.topic.encode(),
                           plane=sent % planes, channel=args.channel, order=args.order, planes=planes,
                           volume=volume)
            sent += 1
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()
        sock.close()
    elapsed = time.perf_counter() - t0
    result = {"frames": sent, "seconds": round(elapsed, 3),
              "frames_per_s": round(sent / elapsed, 2) if elapsed > 0 else 0.0}
    if planes > 1:
        result["volumes"] = sent // planes
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
