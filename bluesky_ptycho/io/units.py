"""Units found in NeXus/HDF5 ``units`` attributes, as factors to SI (metres, electronvolts)."""

from __future__ import annotations

from types import MappingProxyType

__all__ = ["ELEMENTARY_CHARGE_C", "ENERGY_UNITS", "HC_EV_M", "LENGTH_UNITS", "unit_name"]

ELEMENTARY_CHARGE_C = 1.602176634e-19
HC_EV_M = 6.62607015e-34 * 299792458.0 / ELEMENTARY_CHARGE_C
"""Planck constant times the speed of light, in eV m (energy = HC_EV_M / wavelength)."""

LENGTH_UNITS = MappingProxyType(
    {
        "m": 1.0,
        "metre": 1.0,
        "meter": 1.0,
        "mm": 1e-3,
        "um": 1e-6,
        "µm": 1e-6,
        "micron": 1e-6,
        "nm": 1e-9,
        "angstrom": 1e-10,
        "a": 1e-10,
        "å": 1e-10,
    }
)
"""Metres per unit, by lower-case unit name."""

ENERGY_UNITS = MappingProxyType({"ev": 1.0, "kev": 1e3, "j": 1.0 / ELEMENTARY_CHARGE_C})
"""Electronvolts per unit, by lower-case unit name."""


def unit_name(value: object) -> str:
    """A ``units`` attribute (bytes or str) as a stripped lower-case name."""
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text.strip().lower()
