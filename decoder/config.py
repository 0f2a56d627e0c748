"""The [decoder] and [task] sections of a rig config. Owned by the decoder package."""

import msgspec


class DecoderConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    decoder: str = "two_population"


class TaskConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    baseline_s: float = 20.0
