"""Simulated two-photon scope and a simulated mouse that learns the BCI task.

* :mod:`acquisition.sim.anatomy` builds the static tissue (cells, neuropil, vessels) from the seed.
* :class:`acquisition.sim.scope.SimScope` renders frames (uint16) of it and keeps the ground truth.
* :mod:`acquisition.sim.export` writes that truth (suite2p layout) and whole movies to disk.
* :class:`acquisition.sim.mouse.SimMouse` fires and learns from the rewards and feedback it perceives
  (vectorized / scalar / none; docs/SIMULATOR.md); :mod:`acquisition.sim.calcium` is GCaMP (Hill binding).
* :class:`acquisition.sim.neuropil.NeuropilField` is neuropil that follows the cells near each place.
* :class:`acquisition.sim.traces.TraceSim` gives per-ROI F/Fneu without images, for fast loop tests.
* :mod:`acquisition.sim.dendrites` (``n_planes = 2``): apical dendrites whose events carry the learning rule's
  own instructive signal; :mod:`acquisition.sim.dendrite_plane` renders them as plane 1.
* :class:`acquisition.sim.source.SimSource` is the scope as a real-time frame source.
* :mod:`acquisition.sim.config` holds the ``[acquisition.sim]`` table (``SimConfig``, ``MouseConfig``).

Submodules are imported explicitly (nothing here), so loading the config does not pull in scipy.
"""
