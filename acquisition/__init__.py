"""acquisition package of bci-rig."""
