"""bci-rig's shared layers: ``rig.core`` (the contract), ``rig.app`` (CLI, supervisor), ``rig.offline`` (tools)."""

__version__ = "0.1.0"
