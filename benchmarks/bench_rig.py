"""End-to-end benchmark of the real multi-process rig: prints per-stage latency percentiles.

Same as ``rig bench`` (see ``rig bench --help``); kept here beside the per-component benchmarks. Frames come
from the scope twin by default (rendered before the run, sent by a separate process over the CLOOSE raw TCP
link; ``--scope zmq`` over our ZeroMQ stream; ``--scope sim`` the simulator inside the acquisition process):
    python benchmarks/bench_rig.py --mode realtime --duration 60
    python benchmarks/bench_rig.py --mode realtime --duration 60 --scope zmq --console
    python benchmarks/bench_rig.py --mode throughput
    python benchmarks/bench_rig.py --mode fast --duration 20
"""

import argparse
import sys

from rig.offline.bench import add_arguments, cmd_bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(cmd_bench(parser.parse_args()))
