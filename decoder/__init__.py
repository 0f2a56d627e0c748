"""decoder package of bci-rig."""
