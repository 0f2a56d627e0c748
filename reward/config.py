"""The [reward] section of a rig config. Owned by the reward package."""

import msgspec


class RewardConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    port: str = "emulator"
