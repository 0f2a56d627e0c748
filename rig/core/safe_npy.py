"""Load ``.npy`` files without letting them run code: the one loader for suite2p output and session files.

``np.load(path, allow_pickle=True)`` unpickles whatever the file holds, and a pickle can call any importable
function (a ``__reduce__`` returning ``os.system``). suite2p stores ``stat.npy`` and ``ops.npy`` as pickled
object arrays, and those files come from other machines, shared drives and session folders, so they are
read here with an unpickler that resolves only the globals genuine suite2p 0.x / 1.x files need: numpy
arrays, numpy scalars and dtypes, datetimes and plain containers. Anything else stops the load before it is
called, with :class:`ForbiddenPickleError` naming the file and the global.

Arrays without Python objects are read by ``np.load(allow_pickle=False)``, which never unpickles.
"""

from __future__ import annotations

import collections
import datetime
import io
import pathlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

NPY_MAGIC = b"\x93NUMPY"
#: numpy's own limit on the header of a .npy file (``np.load``'s default ``max_header_size``)
MAX_HEADER_SIZE = 10_000


class NpyFileError(ValueError):
    """A ``.npy`` file that cannot be used; the message names the file and what is wrong."""


class ForbiddenPickleError(NpyFileError):
    """The file's pickle asks for a global outside the allowed set; nothing from the file was called."""

    def __init__(self, path: Path, module: str, name: str) -> None:
        self.path, self.module, self.name = path, module, name
        super().__init__(
            f"{path}: refused to load: its pickle asks for the forbidden global {module}.{name}; a suite2p or "
            "numpy file holds only numpy arrays, numbers, dtypes, dates and plain containers, so this file was "
            "made to run code. Nothing in it was run")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes; other codecs are refused (they import modules)."""
    if encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r} is not allowed (only latin1)")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """numpy's pickle helpers, found by what numpy itself pickles with (their module moved in numpy 2)."""
    array = np.zeros(1)
    helpers: dict[str, Callable[..., Any]] = {
        "_reconstruct": array.__reduce__()[0],
        "scalar": np.float64(0).__reduce__()[0],
        "_frombuffer": array.__reduce_ex__(5)[0],
    }
    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):  # numpy 1.x wrote numpy.core, numpy 2.x writes numpy._core
        out[(f"{package}.multiarray", "_reconstruct")] = helpers["_reconstruct"]
        out[(f"{package}.multiarray", "scalar")] = helpers["scalar"]
        out[(f"{package}.numeric", "_frombuffer")] = helpers["_frombuffer"]
    return out


#: (module, name) -> the object the unpickler hands out. Nothing here runs code or touches files: numpy's
#: reconstructors build arrays and scalars from bytes, the rest are value types and containers.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **_numpy_globals(),
    **{("datetime", name): getattr(datetime, name) for name in ("datetime", "date", "time", "timedelta",
                                                                 "timezone")},
    **{("builtins", t.__name__): t for t in (set, frozenset, complex, bytearray, slice)},
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
    # paths load as pure paths: a WindowsPath pickled on the rig PC opens on Linux too, and does no I/O
    ("pathlib", "PurePosixPath"): pathlib.PurePosixPath, ("pathlib", "PosixPath"): pathlib.PurePosixPath,
    ("pathlib", "PureWindowsPath"): pathlib.PureWindowsPath, ("pathlib", "WindowsPath"): pathlib.PureWindowsPath,
}
#: Python 2 module names a protocol-2 pickle may use for the same builtins
_PY2_MODULES = {"__builtin__": "builtins"}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose only way to reach Python objects is :data:`ALLOWED_GLOBALS` (exact names)."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, fix_imports=False, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED_GLOBALS.get((_PY2_MODULES.get(module, module), name))
        if found is None:
            raise ForbiddenPickleError(self._path, module, name)
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def _header_dtype(f: BinaryIO, path: Path) -> np.dtype:
    """The dtype in the .npy header (the header is a Python literal numpy parses with ``ast.literal_eval``)."""
    if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
        raise NpyFileError(f"{path}: cannot read: not a .npy file (no NumPy header), and it is not unpickled")
    f.seek(0)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            _, _, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=MAX_HEADER_SIZE)
        elif version in ((2, 0), (3, 0)):
            _, _, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=MAX_HEADER_SIZE)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, OSError, EOFError) as exc:
        raise NpyFileError(f"{path}: cannot read: bad .npy header: {exc}") from exc
    return dtype


def load_npy(path: str | Path, *, allow_objects: bool = True) -> np.ndarray:
    """The array in ``path``; object arrays (suite2p's ``stat.npy``, ``ops.npy``) through the restricted unpickler.

    ``allow_objects=False``: the file must hold plain numbers (an image, ``iscell.npy``); a pickle is an error.
    Raises :class:`NpyFileError` (a :class:`ForbiddenPickleError` for a pickle that would call something not
    allowed) with a message naming the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            dtype = _header_dtype(f, path)
            if not dtype.hasobject:
                return _load_plain(path)
            if not allow_objects:
                raise NpyFileError(f"{path}: holds Python objects (a pickle) where plain numbers are expected")
            return _unpickle_array(f, path)
    except OSError as exc:
        raise NpyFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _load_plain(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise NpyFileError(f"{path}: cannot read: bad .npy data: {exc}") from exc


def _unpickle_array(f: BinaryIO, path: Path) -> np.ndarray:
    data = io.BytesIO(f.read())
    try:
        obj = _RestrictedUnpickler(data, path).load()
    except NpyFileError:
        raise
    except Exception as exc:  # a corrupt pickle raises anything (UnpicklingError, EOFError, TypeError...)
        raise NpyFileError(f"{path}: cannot read: corrupt pickled data ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, np.ndarray):
        raise NpyFileError(f"{path}: cannot read: the pickle holds a {type(obj).__name__}, not the array a .npy "
                           "file holds")
    return obj
