"""reward package of bci-rig."""
