"""Neuropil activity that varies across the field of view, shared by the rendered scope and the trace sim.

Neuropil is the out-of-focus glow of the axons and dendrites around a soma; its activity follows the
population *near* that place, not the whole field. Model: a coarse grid of nodes over the field (spacing
about ``neuropil_sigma_px``); each node's activity is the Gaussian-weighted (``sigma``) mean dF/F of the
simulated cells around it, and the neuropil brightness anywhere is ``1 + coupling * activity``, interpolated
bilinearly between nodes. Two ROIs far apart see different neuropil; neighbours see nearly the same.
``neuropil_sigma_px = 0`` gives one global level (the population mean) everywhere.
"""

from __future__ import annotations

import math

import numpy as np


def _interp_matrix(coords: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Bilinear (1-D linear) weights of ``coords`` on the sorted node positions: (len(coords), len(nodes))."""
    out = np.zeros((coords.size, nodes.size))
    if nodes.size == 1:
        out[:, 0] = 1.0
        return out
    pos = np.clip(coords, nodes[0], nodes[-1])
    k = np.clip(np.searchsorted(nodes, pos, side="right") - 1, 0, nodes.size - 2)
    f = (pos - nodes[k]) / (nodes[k + 1] - nodes[k])
    rows = np.arange(coords.size)
    out[rows, k] = 1.0 - f
    out[rows, k + 1] = f
    return out


class NeuropilField:
    """Per-frame neuropil levels: at each cell (``cell_levels``) and as an image (``modulate``)."""

    def __init__(self, centers_yx: np.ndarray, shape: tuple[int, int], coupling: float, sigma_px: float,
                 origin: float = 0.0) -> None:
        """``centers_yx``: (n, 2) cell centres in field pixels; ``shape``: the image the field covers, whose
        pixel 0 lies at field coordinate ``-origin`` (a canvas with a margin)."""
        centers = np.asarray(centers_yx, float).reshape(-1, 2)
        n = centers.shape[0]
        self.coupling = float(coupling)
        H, W = shape
        if sigma_px > 0:
            ny = max(2, math.ceil((H - 1) / sigma_px) + 1)
            nx = max(2, math.ceil((W - 1) / sigma_px) + 1)
        else:
            ny = nx = 1
        self._ys = np.linspace(-origin, H - 1 - origin, ny)
        self._xs = np.linspace(-origin, W - 1 - origin, nx)
        if sigma_px > 0:
            gy, gx = np.meshgrid(self._ys, self._xs, indexing="ij")
            d2 = (gy.reshape(-1, 1) - centers[:, 0]) ** 2 + (gx.reshape(-1, 1) - centers[:, 1]) ** 2
            w = np.exp(-d2 / (2.0 * sigma_px**2))
            total = w.sum(axis=1, keepdims=True)
            # a node with no cell near it follows the population mean
            w = np.where(total > 1e-6, w / np.maximum(total, 1e-300), 1.0 / n)
        else:
            w = np.full((1, n), 1.0 / n)
        self._node_weights = w  # (nodes, cells)
        self._ry = _interp_matrix(np.arange(H) - origin, self._ys).astype(np.float32)  # (H, ny)
        self._rx_t = _interp_matrix(np.arange(W) - origin, self._xs).T.astype(np.float32)  # (nx, W)
        my = _interp_matrix(centers[:, 0], self._ys)
        mx = _interp_matrix(centers[:, 1], self._xs)
        at_cells = (my[:, :, None] * mx[:, None, :]).reshape(n, ny * nx)
        self._cell_weights = at_cells @ w  # (cells, cells): cell -> neuropil activity at each cell
        self.nodes = np.zeros((ny, nx))  # activity per node of the last step
        self._tmp = np.empty((H, nx), np.float32)
        self.mean_level = 1.0

    def step(self, dff: np.ndarray) -> float:
        """Take this frame's dF/F; return the field's mean level (1 + coupling * activity)."""
        np.dot(self._node_weights, dff, out=self.nodes.reshape(-1))
        self.mean_level = 1.0 + self.coupling * float(self.nodes.mean())
        return self.mean_level

    def cell_levels(self, dff: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The neuropil level at every cell's centre for this frame's dF/F (does not need ``step``)."""
        np.dot(self._cell_weights, dff, out=out)
        out *= self.coupling
        out += 1.0
        return out

    def modulate(self, neuropil: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``out = neuropil * (level - 1)`` per pixel, for the activity of the last ``step``."""
        nodes = (self.coupling * self.nodes).astype(np.float32)
        np.matmul(self._ry, nodes, out=self._tmp)
        np.matmul(self._tmp, self._rx_t, out=out)
        out *= neuropil
        return out
