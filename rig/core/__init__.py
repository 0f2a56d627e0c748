"""The contract every process imports: wire schema, process base class, bus, clock, store, shared settings.

Imports nothing from the process packages (acquisition, decoder, reward, gui) nor from rig.app / rig.offline;
tests/test_architecture.py enforces it.
"""
