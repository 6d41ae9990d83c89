"""Ptychography step scans that write the ``start["ptycho"]`` contract.

:func:`ptycho_scan` moves a row-axis (``y``) and a column-axis (``x``) motor through one of the
patterns of :mod:`bluesky_ptycho.patterns`, triggers and reads the detectors and both motors at
every point, and puts everything a live reconstruction needs into the start document:
``start["ptycho"]`` is :meth:`bluesky_ptycho.setup.ScanSetup.to_start_doc` of the given setup
with the pattern, the number of points, the *absolute* nominal positions in metres and the
motors' readback data keys filled in. The usual bluesky metadata (``plan_name``,
``plan_args``, ``plan_pattern*``, ``num_points``, ``motors``, ``hints`` ...) is written too.

Units: ``step``, ``center`` and ``extent`` are in motor units; ``setup.position_scale_m``
converts motor units to metres.

Every plan checks its arguments when it is called and raises :class:`ValueError` naming the
bad or missing argument, before any message is yielded. Relative plans read the motors'
current positions when they start (before ``open_run``), so that the start document holds
absolute positions, move to absolute positions, and return the motors to where they started.
"""

from __future__ import annotations

import inspect
import numbers
from collections import defaultdict
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import NamedMovable, Readable
from bluesky.utils import Msg
from numpy.typing import NDArray

from bluesky_ptycho import patterns
from bluesky_ptycho.setup import START_KEY, ScanSetup
from bluesky_ptycho.validation import (
    check_finite_scalar,
    check_non_negative_int,
    check_pair,
    check_positive_int,
    check_positive_scalar,
)

__all__ = [
    "fermat_spiral_ptycho",
    "meander_ptycho",
    "nominal_positions",
    "ptycho_scan",
    "random_ptycho",
    "raster_ptycho",
    "rel_fermat_spiral_ptycho",
    "rel_meander_ptycho",
    "rel_ptycho_scan",
    "rel_random_ptycho",
    "rel_raster_ptycho",
    "rel_spirangle_ptycho",
    "spirangle_ptycho",
]

Plan = Generator[Msg, Any, Any]
"""A bluesky plan: a generator of messages."""

Motor = NamedMovable[Any]
"""A sample stage: set (``bluesky.protocols.NamedMovable``) and read (``Readable``) at each
point; its readback data key becomes one of ``position_keys``."""

PerStep = Callable[..., Generator[Msg, Any, Any]]
"""``per_step(detectors, step, pos_cache)`` as in :func:`bluesky.plan_stubs.one_nd_step`."""

_GRID_PATTERNS = ("raster", "meander", "random")
_DIRECTIONS = ("outward", "inward")
_DEFAULT_DIRECTION = "outward"
_DEFAULT_SEED = 0
_FILLED_BY_PLAN = ("pattern", "nominal_positions_m", "extent_m", "num_points", "position_keys")


# --------------------------------------------------------------------------------------------
# pattern arguments
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pattern:
    """Validated pattern arguments, in motor units."""

    name: str
    step: float | tuple[float, float]
    center: tuple[float, float] | None
    num_points: int | None = None
    n_rows: int | None = None
    n_cols: int | None = None
    n_side: int | None = None
    direction: str | None = None
    extent: tuple[tuple[float, float], tuple[float, float]] | None = None
    seed: int | None = None

    def positions(self) -> NDArray[np.float64]:
        """Positions ``(n, 2)``, (row/y, col/x), in motor units, in visiting order."""
        kwargs: dict[str, Any] = {"step_m": self.step}
        if self.extent is not None:
            kwargs["extent_m"] = self.extent
        else:
            kwargs["center"] = self.center
        for key in ("num_points", "n_rows", "n_cols", "n_side", "direction", "seed"):
            value = getattr(self, key)
            if value is not None:
                kwargs[key] = value
        return patterns.positions(self.name, **kwargs)

    def shifted(self, origin: tuple[float, float]) -> _Pattern:
        """The same pattern moved by ``origin`` (row, col), motor units."""
        dy, dx = origin
        if self.extent is not None:
            (r0, r1), (c0, c1) = self.extent
            return replace(self, extent=((r0 + dy, r1 + dy), (c0 + dx, c1 + dx)))
        cy, cx = self.center if self.center is not None else (0.0, 0.0)
        return replace(self, center=(cy + dy, cx + dx))

    def shape(self) -> list[int] | None:
        """Grid shape ``[rows, cols]`` for grid patterns, None for the Fermat spiral."""
        if self.n_rows is not None and self.n_cols is not None:
            return [self.n_rows, self.n_cols]
        if self.n_side is not None:
            return [self.n_side, self.n_side]
        return None

    def kwargs(self) -> dict[str, Any]:
        """JSON-able keyword arguments of :func:`nominal_positions` for this pattern."""
        out: dict[str, Any] = {
            "pattern": self.name,
            "step": list(self.step) if isinstance(self.step, tuple) else self.step,
        }
        if self.extent is not None:
            out["extent"] = [list(self.extent[0]), list(self.extent[1])]
        else:
            out["center"] = list(self.center) if self.center is not None else [0.0, 0.0]
        for key in ("num_points", "n_rows", "n_cols", "n_side", "direction", "seed"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


_count = check_positive_int
_finite = check_finite_scalar
_positive = check_positive_scalar


def _pair(name: str, value: Any) -> tuple[float, float]:
    return check_pair(name, value, what="(y, x)")


def _step(pattern: str, step: Any) -> float | tuple[float, float]:
    if isinstance(step, (Sequence, np.ndarray)) and not isinstance(step, (str, bytes)):
        if pattern not in _GRID_PATTERNS:
            raise ValueError(
                f"step must be a single number for pattern {pattern!r}, got {step!r} "
                f"(a (row, col) pair is accepted by {', '.join(_GRID_PATTERNS)})"
            )
        return check_pair("step", step, check_positive_scalar, what="(y, x)")
    return _positive("step", step)


def _parse_pattern(
    pattern: Any,
    step: Any,
    *,
    center: Any,
    num_points: Any,
    n_rows: Any,
    n_cols: Any,
    n_side: Any,
    direction: Any,
    extent: Any,
    seed: Any,
) -> _Pattern:
    """Check the pattern arguments together; ``ValueError`` names what is wrong."""
    if not isinstance(pattern, str) or pattern not in patterns.PATTERN_NAMES:
        raise ValueError(
            f"unknown scan pattern {pattern!r}; valid names: {', '.join(patterns.PATTERN_NAMES)}"
        )
    given = {
        "num_points": num_points is not None,
        "n_rows": n_rows is not None,
        "n_cols": n_cols is not None,
        "n_side": n_side is not None,
        "extent": extent is not None,
        "direction": direction != _DEFAULT_DIRECTION,
        "seed": not (isinstance(seed, numbers.Integral) and seed == _DEFAULT_SEED),
    }
    if pattern in _GRID_PATTERNS:
        used = {"n_rows", "n_cols", "n_side"} | ({"seed"} if pattern == "random" else set())
        need = "n_rows and n_cols (or n_side for a square grid)"
    elif pattern == "spirangle":
        used = {"n_side", "direction"}
        need = "n_side"
    else:
        used = {"num_points", "extent"}
        need = "num_points, or extent"
    unused = [name for name, is_given in given.items() if is_given and name not in used]
    if unused:
        raise ValueError(
            f"pattern {pattern!r} does not use {', '.join(unused)}; it needs step and {need}"
        )

    step_value = _step(pattern, step)
    center_value = None if center is None else _pair("center", center)
    if pattern in _GRID_PATTERNS:
        if n_side is not None:
            if n_rows is not None or n_cols is not None:
                raise ValueError(f"pattern {pattern!r}: give n_side or n_rows and n_cols, not both")
            n_rows = n_cols = _count("n_side", n_side)
        missing = [k for k, v in (("n_rows", n_rows), ("n_cols", n_cols)) if v is None]
        if missing:
            raise ValueError(f"pattern {pattern!r} needs {need}; missing {', '.join(missing)}")
        seed_value = None
        if pattern == "random":
            seed_value = check_non_negative_int("seed", seed)
        return _Pattern(
            pattern,
            step_value,
            center_value or (0.0, 0.0),
            n_rows=_count("n_rows", n_rows),
            n_cols=_count("n_cols", n_cols),
            seed=seed_value,
        )
    if pattern == "spirangle":
        if n_side is None:
            raise ValueError("pattern 'spirangle' needs n_side (points per side); missing n_side")
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")
        return _Pattern(
            pattern,
            step_value,
            center_value or (0.0, 0.0),
            n_side=_count("n_side", n_side),
            direction=str(direction),
        )
    # fermat
    if (num_points is None) == (extent is None):
        raise ValueError(
            "pattern 'fermat' needs exactly one of num_points and extent, "
            + ("got both" if num_points is not None else "got neither")
        )
    if extent is not None:
        if center is not None:
            raise ValueError(
                "pattern 'fermat': give center or extent, not both (extent fixes the centre)"
            )
        if isinstance(extent, (str, bytes)) or not isinstance(extent, (Sequence, np.ndarray)):
            raise ValueError(f"extent must be ((y0, y1), (x0, x1)), got {extent!r}")
        rows = list(extent)
        if len(rows) != 2:
            raise ValueError(f"extent must be ((y0, y1), (x0, x1)), got {extent!r}")
        ext = (_pair("extent[0]", rows[0]), _pair("extent[1]", rows[1]))
        if ext[0][0] == ext[0][1] and ext[1][0] == ext[1][1]:
            raise ValueError(f"extent must not be a single point, got {extent!r}")
        return _Pattern(pattern, step_value, None, extent=ext)
    return _Pattern(
        pattern, step_value, center_value or (0.0, 0.0), num_points=_count("num_points", num_points)
    )


def nominal_positions(
    pattern: str,
    step: float | tuple[float, float],
    *,
    center: tuple[float, float] | None = None,
    num_points: int | None = None,
    n_rows: int | None = None,
    n_cols: int | None = None,
    n_side: int | None = None,
    direction: str = _DEFAULT_DIRECTION,
    extent: tuple[tuple[float, float], tuple[float, float]] | None = None,
    seed: int = _DEFAULT_SEED,
) -> NDArray[np.float64]:
    """The positions an absolute :func:`ptycho_scan` with these arguments visits.

    For a relative scan these are the offsets from the motors' positions at the start.
    The start document's ``plan_pattern`` / ``plan_pattern_module`` / ``plan_pattern_args``
    name this function and its (absolute) arguments, so ``nominal_positions(
    **start["plan_pattern_args"])`` reproduces a run's positions in motor units.

    Parameters
    ----------
    pattern : {"raster", "meander", "random", "spirangle", "fermat"}
        Scan pattern, see :mod:`bluesky_ptycho.patterns`.
    step : float or (float, float)
        Step in motor units; grid patterns (raster, meander, random) also take ``(row, col)``.
    center : (float, float), optional
        Centre ``(y, x)`` in motor units; default ``(0, 0)``. Not with ``extent``.
    num_points : int, optional
        Fermat spiral: number of points.
    n_rows, n_cols : int, optional
        Raster, meander, random: grid points along ``y`` and ``x``.
    n_side : int, optional
        Spirangle: points per side; raster, meander, random: a square grid.
    direction : {"outward", "inward"}, optional
        Spirangle direction.
    extent : ((y0, y1), (x0, x1)), optional
        Fermat spiral: rectangle to cover, instead of ``num_points``.
    seed : int, optional
        Random: seed of the visiting order.

    Returns
    -------
    ndarray of float64, shape (n, 2)
        Positions ``(y, x)`` in motor units, in visiting order.

    Raises
    ------
    ValueError
        If an argument is missing, not used by the pattern, or invalid (the message names it).
    """
    return _parse_pattern(
        pattern,
        step,
        center=center,
        num_points=num_points,
        n_rows=n_rows,
        n_cols=n_cols,
        n_side=n_side,
        direction=direction,
        extent=extent,
        seed=seed,
    ).positions()


# --------------------------------------------------------------------------------------------
# devices, setup, metadata
# --------------------------------------------------------------------------------------------


def _readback_key(motor: Any) -> str:
    """Data key of a motor's readback in events (hinted field, else readback name)."""
    hints = getattr(motor, "hints", None)
    hinted = hints.get("fields") if isinstance(hints, Mapping) else None
    if hinted:
        return str(hinted[0])
    for attr in ("user_readback", "readback"):
        name = getattr(getattr(motor, attr, None), "name", None)
        if isinstance(name, str) and name:
            return name
    return str(motor.name)


def _check_devices(detectors: Any, x_motor: Any, y_motor: Any) -> list[Any]:
    if isinstance(detectors, (str, bytes)) or not isinstance(detectors, Sequence):
        raise ValueError(
            f"detectors must be a list of readable devices, got {type(detectors).__name__}"
        )
    for i, det in enumerate(detectors):
        if not isinstance(getattr(det, "name", None), str):
            raise ValueError(f"detectors[{i}] is not a named readable device: {det!r}")
    for label, motor in (("x_motor", x_motor), ("y_motor", y_motor)):
        if not isinstance(getattr(motor, "name", None), str) or not callable(
            getattr(motor, "set", None)
        ):
            raise ValueError(f"{label} must be a movable device with a name, got {motor!r}")
    if x_motor is y_motor:
        raise ValueError("x_motor and y_motor must be two different motors")
    return list(detectors)


def _check_per_step(per_step: Any) -> PerStep:
    if per_step is None:
        return bps.one_nd_step
    if not callable(per_step):
        raise ValueError(f"per_step must be callable, got {per_step!r}")
    try:
        signature = inspect.signature(per_step)
    except (TypeError, ValueError):  # builtins without a signature: trust the caller
        return per_step
    try:
        signature.bind(None, None, None)
    except TypeError:
        raise ValueError(
            f"per_step must accept (detectors, step, pos_cache) like "
            f"bluesky.plan_stubs.one_nd_step; its signature is {signature}"
        ) from None
    return per_step


def _required_setup_fields() -> list[str]:
    return [
        f.name for f in fields(ScanSetup) if f.default is MISSING and f.default_factory is MISSING
    ]


def _scan_setup(
    setup: ScanSetup | Mapping[str, Any],
    *,
    pattern: str,
    positions: NDArray[np.float64],
    position_keys: tuple[str, str],
) -> ScanSetup:
    """The given setup with the scan filled in; ``positions`` in motor units.

    The positions go in only once scaled to metres: the setup's checks of the scan size
    (:class:`~bluesky_ptycho.setup.Limits`) read them as metres.
    """
    filled: dict[str, Any] = {
        "pattern": pattern,
        "nominal_positions_m": None,
        "extent_m": None,
        "num_points": int(positions.shape[0]),
        "position_keys": position_keys,
    }
    completed = _fill_setup(setup, filled)
    return replace(completed, nominal_positions_m=positions * completed.position_scale_m)


def _fill_setup(setup: ScanSetup | Mapping[str, Any], filled: dict[str, Any]) -> ScanSetup:
    try:
        return _build_setup(setup, filled)
    except TypeError as exc:  # a wrongly typed value deep inside ScanSetup's checks
        raise ValueError(f"setup is malformed: {exc}") from None


def _build_setup(setup: ScanSetup | Mapping[str, Any], filled: dict[str, Any]) -> ScanSetup:
    if isinstance(setup, ScanSetup):
        return replace(setup, **filled)
    if not isinstance(setup, Mapping):
        raise ValueError(
            f"setup must be a ScanSetup or a dict of its fields, got {type(setup).__name__}"
        )
    if "orientation" in setup or "scan" in setup:  # the start-document form
        return ScanSetup.from_start_doc(setup, **filled)
    known = {f.name for f in fields(ScanSetup)}
    unknown = sorted(str(k) for k in setup if k not in known)
    if unknown:
        raise ValueError(f"setup has unknown field(s) {unknown}; ScanSetup fields: {sorted(known)}")
    missing = [k for k in _required_setup_fields() if k not in setup]
    if missing:
        raise ValueError(f"setup lacks required field(s) {missing}")
    return ScanSetup(**{**setup, **filled})


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, nested dicts merged rather than replaced."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _ptycho_doc(setup: ScanSetup, user_ptycho: Mapping[str, Any]) -> dict[str, Any]:
    """``start["ptycho"]``: the setup's dict with the user's additions merged in, checked."""
    doc = _jsonable(_merge(setup.to_start_doc(), user_ptycho))
    try:
        ScanSetup.from_start_doc(doc)
    except ValueError as exc:
        raise ValueError(f'md["{START_KEY}"] makes the start document invalid: {exc}') from None
    return doc


@dataclass(frozen=True)
class _Request:
    """One checked plan invocation."""

    plan_name: str
    detectors: list[Readable[Any]]
    y_motor: Motor
    x_motor: Motor
    pattern: _Pattern
    relative: bool
    setup: ScanSetup | Mapping[str, Any]
    per_step: PerStep
    md: Mapping[str, Any]
    plan_args: dict[str, Any]

    @property
    def position_keys(self) -> tuple[str, str]:
        return (_readback_key(self.y_motor), _readback_key(self.x_motor))

    def start_metadata(self, pattern: _Pattern, points: NDArray[np.float64]) -> dict[str, Any]:
        """Start-document metadata for the absolute ``pattern`` visiting ``points``."""
        setup = _scan_setup(
            self.setup, pattern=pattern.name, positions=points, position_keys=self.position_keys
        )
        n = int(points.shape[0])
        y_key, x_key = self.position_keys
        md: dict[str, Any] = {
            "plan_name": self.plan_name,
            "plan_args": self.plan_args,
            "plan_pattern": nominal_positions.__name__,
            "plan_pattern_module": __name__,
            "plan_pattern_args": pattern.kwargs(),
            "num_points": n,
            "num_intervals": n - 1,
            "motors": [self.y_motor.name, self.x_motor.name],
            "detectors": [det.name for det in self.detectors],
            "extents": [
                [float(points[:, 0].min()), float(points[:, 0].max())],
                [float(points[:, 1].min()), float(points[:, 1].max())],
            ],
        }
        shape = pattern.shape()
        if shape is not None:
            md["shape"] = shape
        md.update({k: v for k, v in self.md.items() if k not in ("hints", START_KEY)})
        md["hints"] = {
            "dimensions": [[[y_key], "primary"], [[x_key], "primary"]],
            **dict(self.md.get("hints") or {}),
        }
        md[START_KEY] = _ptycho_doc(setup, self.md.get(START_KEY) or {})
        return md


# --------------------------------------------------------------------------------------------
# the plans
# --------------------------------------------------------------------------------------------


def _current_position(motor: Any) -> Generator[Msg, Any, float]:
    """Where a relative scan is centred: the setpoint of a Locatable, else the readback."""
    if callable(getattr(motor, "locate", None)):
        location = yield from bps.locate(motor)  # type: ignore[misc,func-returns-value]
        value = 0.0 if location is None else location["setpoint"]
    else:
        value = yield from bps.rd(motor, default_value=0.0)
    try:
        return _finite(f"current position of {motor.name}", value)
    except ValueError as exc:
        raise ValueError(f"cannot centre a relative scan: {exc}") from None


def _step_scan(request: _Request, points: NDArray[np.float64], md: dict[str, Any]) -> Plan:
    """Stage, open the run, visit ``points`` (absolute, motor units) with ``per_step``."""
    y_motor, x_motor = request.y_motor, request.x_motor
    pos_cache: dict[Any, Any] = defaultdict(lambda: None)

    @bpp.stage_decorator([*request.detectors, y_motor, x_motor])
    @bpp.run_decorator(md=md)
    def inner() -> Plan:
        for y, x in points:
            step = {y_motor: float(y), x_motor: float(x)}
            yield from request.per_step(request.detectors, step, pos_cache)

    return (yield from inner())


def _execute(request: _Request, points: NDArray[np.float64], md: dict[str, Any]) -> Plan:
    """Run an absolute scan as prepared, or re-centre a relative one first."""
    if not request.relative:
        return (yield from _step_scan(request, points, md))
    origin_y = yield from _current_position(request.y_motor)
    origin_x = yield from _current_position(request.x_motor)
    pattern = request.pattern.shifted((origin_y, origin_x))
    points = pattern.positions()
    md = request.start_metadata(pattern, points)
    motors = [request.y_motor, request.x_motor]
    return (yield from bpp.reset_positions_wrapper(_step_scan(request, points, md), motors))


def _plan(
    plan_name: str,
    detectors: Sequence[Readable[Any]],
    x_motor: Motor,
    y_motor: Motor,
    *,
    setup: ScanSetup | Mapping[str, Any],
    pattern: str,
    step: float | tuple[float, float],
    center: tuple[float, float] | None,
    num_points: int | None,
    n_rows: int | None,
    n_cols: int | None,
    n_side: int | None,
    direction: str,
    extent: tuple[tuple[float, float], tuple[float, float]] | None,
    seed: int,
    relative: bool,
    per_step: PerStep | None,
    md: Mapping[str, Any] | None,
) -> Plan:
    """Check everything now, then return the plan generator."""
    dets = _check_devices(detectors, x_motor, y_motor)
    spec = _parse_pattern(
        pattern,
        step,
        center=center,
        num_points=num_points,
        n_rows=n_rows,
        n_cols=n_cols,
        n_side=n_side,
        direction=direction,
        extent=extent,
        seed=seed,
    )
    if md is None:
        md = {}
    if not isinstance(md, Mapping):
        raise ValueError(f"md must be a dict, got {type(md).__name__}")
    if not isinstance(md.get(START_KEY) or {}, Mapping):
        raise ValueError(f'md["{START_KEY}"] must be a dict that extends the setup')
    if not isinstance(md.get("hints") or {}, Mapping):
        raise ValueError('md["hints"] must be a dict')
    plan_args = _jsonable(
        {
            "detectors": [repr(det) for det in dets],
            "x_motor": repr(x_motor),
            "y_motor": repr(y_motor),
            "pattern": spec.name,
            "step": spec.step,
            "center": None if center is None else _pair("center", center),
            "num_points": spec.num_points,
            "n_rows": spec.n_rows,
            "n_cols": spec.n_cols,
            "n_side": spec.n_side,
            "direction": spec.direction,
            "extent": spec.extent,
            "seed": spec.seed,
            "relative": bool(relative),
            "per_step": repr(per_step),
        }
    )
    request = _Request(
        plan_name=plan_name,
        detectors=dets,
        y_motor=y_motor,
        x_motor=x_motor,
        pattern=spec,
        relative=bool(relative),
        setup=setup,
        per_step=_check_per_step(per_step),
        md=dict(md),
        plan_args=plan_args,
    )
    # Build the metadata now so that a bad setup or md fails at call time; a relative scan
    # rebuilds it around the motors' positions when it runs (still before open_run).
    points = spec.positions()
    md_now = request.start_metadata(spec, points)
    return _execute(request, points, md_now)


def ptycho_scan(
    detectors: Sequence[Readable[Any]],
    x_motor: Motor,
    y_motor: Motor,
    *,
    setup: ScanSetup | Mapping[str, Any],
    pattern: str = "spirangle",
    step: float | tuple[float, float],
    center: tuple[float, float] | None = None,
    num_points: int | None = None,
    n_rows: int | None = None,
    n_cols: int | None = None,
    n_side: int | None = None,
    direction: str = _DEFAULT_DIRECTION,
    extent: tuple[tuple[float, float], tuple[float, float]] | None = None,
    seed: int = _DEFAULT_SEED,
    relative: bool = False,
    per_step: PerStep | None = None,
    md: Mapping[str, Any] | None = None,
) -> Plan:
    """Ptychographic step scan of ``y_motor`` (rows) and ``x_motor`` (columns).

    At every point of the pattern both motors move, then the detectors and the motors are
    triggered and read into the ``primary`` stream. The start document carries
    ``start["ptycho"]`` (see :mod:`bluesky_ptycho.setup`) with the absolute nominal positions
    in metres and ``position_keys`` = the readback data keys of ``(y_motor, x_motor)``.

    Parameters
    ----------
    detectors : list of readable devices
        Detectors to trigger and read at every point; one of them produces the frames under
        ``setup.detector_key``.
    x_motor, y_motor : movable devices
        Column-axis (``x``) and row-axis (``y``) sample motors.
    setup : ScanSetup or dict
        Energy, distance, detector pixel, crop, beam centre, orientation, ``detector_key`` and
        ``position_scale_m`` (motor units to metres). A dict holds :class:`ScanSetup` field
        names (or is a ``start["ptycho"]``-style dict with ``orientation``). The plan fills in
        ``pattern``, ``num_points``, ``nominal_positions_m`` and ``position_keys`` and drops
        ``extent_m``.
    pattern : {"spirangle", "fermat", "raster", "meander", "random"}, optional
        Scan pattern (see :mod:`bluesky_ptycho.patterns`).
    step : float or (float, float)
        Step between neighbouring points, motor units. Grid patterns also accept
        ``(row, col)``.
    center : (float, float), optional
        Pattern centre ``(y, x)``, motor units. Default ``(0, 0)``, or for a relative scan
        the motors' positions at the start (a given ``center`` is then an offset from them).
    num_points : int, optional
        ``"fermat"``: number of points (or give ``extent``).
    n_rows, n_cols : int, optional
        ``"raster"``, ``"meander"``, ``"random"``: grid points along ``y`` and ``x``.
    n_side : int, optional
        ``"spirangle"``: points per side (required); grid patterns: a square grid.
    direction : {"outward", "inward"}, optional
        ``"spirangle"``: from the centre outward (default) or from a corner inward.
    extent : ((y0, y1), (x0, x1)), optional
        ``"fermat"``: rectangle to cover, motor units (relative scans: offsets), instead of
        ``num_points``; not with ``center``.
    seed : int, optional
        ``"random"``: seed of the visiting order.
    relative : bool, optional
        Positions relative to the motors' positions at the start (read before ``open_run``;
        the setpoint of a Locatable motor, else its readback); the motors return there at the
        end. The start document still holds absolute positions.
    per_step : callable, optional
        ``per_step(detectors, step, pos_cache)`` replacing
        :func:`bluesky.plan_stubs.one_nd_step`; ``step`` maps ``y_motor`` and ``x_motor`` to
        absolute positions.
    md : dict, optional
        Metadata merged over the plan's own (the user's values win). ``md["ptycho"]`` is
        merged key by key into the contract (e.g. to add a mask or override
        ``position_keys`` with encoder keys) and must leave it valid; ``md["hints"]`` is
        merged into the hints.

    Returns
    -------
    generator
        The plan; running it returns the run's uid.

    Raises
    ------
    ValueError
        At call time, before any message, if an argument is missing, unused by the pattern
        or invalid; the message names it.

    Notes
    -----
    Start-document metadata besides ``ptycho``: ``plan_name``, ``plan_args`` (devices as
    ``repr``), ``plan_pattern = "nominal_positions"`` with ``plan_pattern_module`` this module
    and JSON ``plan_pattern_args`` (``nominal_positions(**plan_pattern_args)`` gives the
    absolute positions in motor units), ``num_points``, ``num_intervals``, ``motors`` and
    ``detectors`` (names), ``extents`` (``[[y_min, y_max], [x_min, x_max]]``, motor units),
    ``shape`` (``[rows, cols]``, grid patterns only) and ``hints["dimensions"]``, one entry
    per motor, ``y`` first.
    """
    return _plan(
        "ptycho_scan",
        detectors,
        x_motor,
        y_motor,
        setup=setup,
        pattern=pattern,
        step=step,
        center=center,
        num_points=num_points,
        n_rows=n_rows,
        n_cols=n_cols,
        n_side=n_side,
        direction=direction,
        extent=extent,
        seed=seed,
        relative=relative,
        per_step=per_step,
        md=md,
    )


def rel_ptycho_scan(
    detectors: Sequence[Readable[Any]],
    x_motor: Motor,
    y_motor: Motor,
    *,
    setup: ScanSetup | Mapping[str, Any],
    pattern: str = "spirangle",
    step: float | tuple[float, float],
    center: tuple[float, float] | None = None,
    num_points: int | None = None,
    n_rows: int | None = None,
    n_cols: int | None = None,
    n_side: int | None = None,
    direction: str = _DEFAULT_DIRECTION,
    extent: tuple[tuple[float, float], tuple[float, float]] | None = None,
    seed: int = _DEFAULT_SEED,
    per_step: PerStep | None = None,
    md: Mapping[str, Any] | None = None,
) -> Plan:
    """:func:`ptycho_scan` relative to the motors' positions at the start.

    ``center`` and ``extent`` are offsets from those positions; the start document holds
    absolute positions, and the motors return to where they started. See :func:`ptycho_scan`
    for the parameters.
    """
    return _plan(
        "rel_ptycho_scan",
        detectors,
        x_motor,
        y_motor,
        setup=setup,
        pattern=pattern,
        step=step,
        center=center,
        num_points=num_points,
        n_rows=n_rows,
        n_cols=n_cols,
        n_side=n_side,
        direction=direction,
        extent=extent,
        seed=seed,
        relative=True,
        per_step=per_step,
        md=md,
    )


# --------------------------------------------------------------------------------------------
# named shortcuts
# --------------------------------------------------------------------------------------------

_PATTERN_NEEDS = {
    "fermat": "``step`` and ``num_points`` (or ``extent``)",
    "spirangle": "``step`` and ``n_side`` (``direction`` optional)",
    "raster": "``step`` and ``n_rows``, ``n_cols`` (or ``n_side``)",
    "meander": "``step`` and ``n_rows``, ``n_cols`` (or ``n_side``)",
    "random": "``step`` and ``n_rows``, ``n_cols`` (or ``n_side``); ``seed`` optional",
}


def _shortcut(name: str, pattern: str, *, relative: bool, summary: str) -> Callable[..., Plan]:
    """A named plan: :func:`ptycho_scan` with the pattern (and relativity) fixed."""
    base = rel_ptycho_scan if relative else ptycho_scan
    base_signature = inspect.signature(base)
    signature = base_signature.replace(
        parameters=[p for p in base_signature.parameters.values() if p.name != "pattern"]
    )

    def plan(
        detectors: Sequence[Readable[Any]], x_motor: Motor, y_motor: Motor, **kwargs: Any
    ) -> Plan:
        bound = signature.bind(detectors, x_motor, y_motor, **kwargs)  # TypeError as for a def
        arguments = dict(bound.arguments)
        for key in ("detectors", "x_motor", "y_motor"):
            arguments.pop(key)
        relative_scan = arguments.pop("relative", relative)
        return _plan(
            name,
            detectors,
            x_motor,
            y_motor,
            pattern=pattern,
            relative=relative_scan,
            **{
                p.name: arguments.get(p.name, p.default)
                for p in signature.parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "relative"
            },
        )

    plan.__name__ = plan.__qualname__ = name
    plan.__module__ = __name__
    plan.__signature__ = signature  # type: ignore[attr-defined]
    where = (
        "relative to the motors' positions at the start (they return there at the end)"
        if relative
        else "at absolute positions (``relative=True`` for a relative scan)"
    )
    plan.__doc__ = (
        f"{summary}, {where}.\n\n"
        f"    :func:`ptycho_scan` with ``pattern={pattern!r}``; needs {_PATTERN_NEEDS[pattern]}.\n"
        f"    Same keyword arguments as :func:`ptycho_scan` without ``pattern``; arguments the\n"
        f"    pattern does not use raise ``ValueError``.\n"
    )
    return plan


fermat_spiral_ptycho = _shortcut(
    "fermat_spiral_ptycho", "fermat", relative=False, summary="Fermat-spiral ptychography scan"
)
spirangle_ptycho = _shortcut(
    "spirangle_ptycho", "spirangle", relative=False, summary="Square-spiral ptychography scan"
)
raster_ptycho = _shortcut(
    "raster_ptycho", "raster", relative=False, summary="Raster ptychography scan (y fast)"
)
meander_ptycho = _shortcut(
    "meander_ptycho", "meander", relative=False, summary="Snake ptychography scan (y fast)"
)
random_ptycho = _shortcut(
    "random_ptycho", "random", relative=False, summary="Grid ptychography scan in random order"
)
rel_fermat_spiral_ptycho = _shortcut(
    "rel_fermat_spiral_ptycho", "fermat", relative=True, summary="Fermat-spiral ptychography scan"
)
rel_spirangle_ptycho = _shortcut(
    "rel_spirangle_ptycho", "spirangle", relative=True, summary="Square-spiral ptychography scan"
)
rel_raster_ptycho = _shortcut(
    "rel_raster_ptycho", "raster", relative=True, summary="Raster ptychography scan (y fast)"
)
rel_meander_ptycho = _shortcut(
    "rel_meander_ptycho", "meander", relative=True, summary="Snake ptychography scan (y fast)"
)
rel_random_ptycho = _shortcut(
    "rel_random_ptycho", "random", relative=True, summary="Grid ptychography scan in random order"
)
