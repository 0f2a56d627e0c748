"""bci-rig shared core: wire schema, process contract, supervisor, config, session store, CLI."""

__version__ = "0.1.0"
