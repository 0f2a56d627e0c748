"""The [acquisition] section of a rig config. Owned by the acquisition package."""

import msgspec


class AcquisitionConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    source: str = "sim"  # sim | replay | cloose_tcp | zmq_stream
    frame_rate_hz: float = 30.0
