#!/usr/bin/env python3
"""Relay PrairieView's raw data stream to bci-rig over TCP (run on the PrairieView PC; docs/SCOPES.md).

NOT YET RUN AGAINST A REAL PRAIRIEVIEW. It connects to PrairieLink (Windows, ``pip install pywin32``),
turns on raw data streaming (``-srd True``), and writes every int16 sample ``ReadRawDataStream`` returns,
little-endian and unchanged, to the one bci-rig that connected (``[acquisition.prairieview] transport =
"tcp"``). Frame assembly (offset, averaging, bidirectional flip) happens on the rig side.

Start it before the acquisition (T-series) starts: the stream has no frame markers, so the rig counts
frames from the first sample it gets. Samples read while no rig is connected are dropped.

    python scripts/prairielink_relay.py --port 30003 --host 0.0.0.0     # a rig on another PC
"""

from __future__ import annotations

import argparse
import socket
import sys

from acquisition.sources.prairieview import PrairieLinkTransport


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every one)")
    parser.add_argument("--port", type=int, default=30003)
    args = parser.parse_args(argv)
    link = PrairieLinkTransport()
    link.open()
    server = socket.create_server((args.host, args.port))
    server.settimeout(0.05)
    rig: socket.socket | None = None
    print(f"prairielink_relay: serving raw samples on {args.host}:{args.port}", file=sys.stderr)
    try:
        while True:
            try:
                conn, addr = server.accept()
            except TimeoutError:
                pass
            else:
                if rig is not None:
                    rig.close()
                rig = conn
                print(f"prairielink_relay: rig connected from {addr[0]}", file=sys.stderr)
            samples = link.read_chunk(0.01)
            if rig is None or not samples.size:
                continue
            try:
                rig.sendall(samples.astype("<i2").tobytes())
            except OSError as exc:
                print(f"prairielink_relay: rig connection lost ({exc})", file=sys.stderr)
                rig.close()
                rig = None
    except KeyboardInterrupt:
        return 0
    finally:
        link.close()
        server.close()


if __name__ == "__main__":
    sys.exit(main())
