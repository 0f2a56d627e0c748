"""The [gui] section of a rig config. Owned by the gui package."""

import msgspec


class GuiConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
