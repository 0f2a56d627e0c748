"""Simulated two-photon scope and a simulated mouse that learns the BCI task.

* :class:`acquisition.sim.scope.SimScope` renders frames (uint16) and keeps the ground truth.
* :class:`acquisition.sim.mouse.SimMouse` fires and learns from rewards (vectorized / scalar / none).
* :class:`acquisition.sim.traces.TraceSim` gives per-ROI F/Fneu without images, for fast loop tests.
* :class:`acquisition.sim.source.SimSource` is the scope as a real-time frame source.
* :mod:`acquisition.sim.config` holds the ``[acquisition.sim]`` table (``SimConfig``, ``MouseConfig``).

Submodules are imported explicitly (nothing here), so loading the config does not pull in scipy.
"""
