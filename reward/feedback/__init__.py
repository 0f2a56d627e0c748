"""Feedback to the animal: the tone and the grating that make the decoder's cursor perceptible.

``config`` (the ``[feedback]`` section), ``plan`` (the pure decisions → stimulus function shared by the
process and replay), ``audio`` (phase-continuous synthesis, the WAV twin, the sound card), ``grating``
(the offscreen twin and the Qt full-screen window), ``process`` (the bus process).
"""
