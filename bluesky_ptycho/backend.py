"""Array namespaces (NumPy, CuPy, array-api-strict) and the unitary 2-D FFT for each.

Engine code asks this module for the namespace of its arrays and for FFT functions; nothing
else about the backend is global. NumPy arrays get SciPy's FFT (native complex64, no copies);
any other namespace uses its own ``fft`` extension of the array API standard.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_numpy_namespace

__all__ = [
    "Backend",
    "array_namespace",
    "backend_for",
    "get_backend",
    "to_numpy",
]

_NAMESPACES = {
    "numpy": "array_api_compat.numpy",
    "cupy": "array_api_compat.cupy",
    "array_api_strict": "array_api_strict",
}


@dataclass(frozen=True)
class Backend:
    """An array namespace with the FFT pair the engine uses.

    Attributes
    ----------
    name : str
        ``"numpy"``, ``"cupy"`` or ``"array_api_strict"``.
    xp : module
        The array-API namespace.
    fft2, ifft2 : callable
        Unitary (``norm="ortho"``) 2-D transforms over the last two axes.
    """

    name: str
    xp: ModuleType
    fft2: Callable[[Any], Any]
    ifft2: Callable[[Any], Any]

    @property
    def is_numpy(self) -> bool:
        return self.name == "numpy"


def _numpy_fft() -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    import scipy.fft

    def fft2(a: Any) -> Any:
        return scipy.fft.fft2(a, norm="ortho", overwrite_x=True)

    def ifft2(a: Any) -> Any:
        return scipy.fft.ifft2(a, norm="ortho", overwrite_x=True)

    return fft2, ifft2


def _standard_fft(xp: ModuleType) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    def fft2(a: Any) -> Any:
        return xp.fft.fftn(a, axes=(-2, -1), norm="ortho")

    def ifft2(a: Any) -> Any:
        return xp.fft.ifftn(a, axes=(-2, -1), norm="ortho")

    return fft2, ifft2


def _make(name: str, xp: ModuleType) -> Backend:
    if name == "numpy":
        fft2, ifft2 = _numpy_fft()
    else:
        fft2, ifft2 = _standard_fft(xp)
    return Backend(name=name, xp=xp, fft2=fft2, ifft2=ifft2)


def get_backend(name: str = "numpy") -> Backend:
    """Return the backend called ``name``.

    Parameters
    ----------
    name : {"numpy", "cupy", "array_api_strict"}
        Which array library to compute with.

    Raises
    ------
    ValueError
        If the name is unknown.
    ImportError
        If the library is not installed (CuPy needs the ``gpu`` extra and a GPU).
    """
    try:
        module = _NAMESPACES[name]
    except KeyError:
        raise ValueError(
            f"unknown array backend {name!r}; choose one of {sorted(_NAMESPACES)}"
        ) from None
    return _make(name, importlib.import_module(module))


def backend_for(*arrays: Any) -> Backend:
    """Return the backend of the given arrays (NumPy for plain Python/NumPy input)."""
    xp = array_namespace(*arrays)
    if is_numpy_namespace(xp):
        return get_backend("numpy")
    name = xp.__name__.split(".")[-1]
    if name in _NAMESPACES:
        return _make(name, xp)
    return _make(xp.__name__, xp)


def to_numpy(a: Any) -> np.ndarray:
    """Return a host NumPy copy of any array-API array (CuPy, array-api-strict, NumPy)."""
    if isinstance(a, np.ndarray):
        return a.copy()
    get = getattr(a, "get", None)  # CuPy
    if callable(get):
        return np.asarray(get())
    try:
        return np.from_dlpack(a).copy()
    except (TypeError, RuntimeError, BufferError, AttributeError):
        return np.asarray(a).copy()
