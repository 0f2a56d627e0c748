"""gui package of bci-rig."""
