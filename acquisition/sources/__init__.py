"""Frame sources behind one interface (:class:`~acquisition.sources.base.FrameSource`), chosen in config.

Which sources exist, how each is built and what each can do: :mod:`acquisition.sources.registry`. This
package imports nothing itself, so ``acquisition.config`` can read the registry without numpy.
"""
