"""Fixtures shared by the PtychoCallback tests: a scan setup, composed runs, closed callbacks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import event_model
import pytest

from bluesky_ptycho.callback import PtychoCallback
from bluesky_ptycho.setup import ScanSetup

DET, SY, SX = "det_image", "sy", "sx"


def det_data_keys(shape=(64, 64), external: str | None = None, detector: str = DET) -> dict:
    """Descriptor data keys: a detector image and two motor readbacks."""
    det: dict[str, Any] = {"source": "sim", "dtype": "array", "shape": list(shape)}
    if external:
        det["external"] = external
    number = {"source": "sim", "dtype": "number", "shape": []}
    return {detector: det, SY: dict(number), SX: dict(number)}


class DocRun:
    """A run's documents, composed with event_model and fed to a callback as they are made.

    ``DocRun(cb, md=..., data_keys=...)`` sends the start and a ``primary`` descriptor;
    :meth:`event` composes (and, unless ``send=False``, sends) an event with the next seq_num.
    """

    DET, SY, SX = DET, SY, SX

    def __init__(
        self,
        cb: Callable[[str, Any], Any],
        md: dict | None = None,
        data_keys: dict | None = None,
        *,
        send: bool = True,
    ) -> None:
        self.cb = cb
        self.run = event_model.compose_run(metadata=md or {})
        self.start_doc = self.run.start_doc
        self.uid = self.start_doc["uid"]
        self.desc = self.run.compose_descriptor(
            name="primary", data_keys=data_keys if data_keys is not None else det_data_keys()
        )
        self.descriptor_doc = self.desc.descriptor_doc
        if send:
            cb("start", self.start_doc)
            cb("descriptor", self.descriptor_doc)
        self.seq = 0

    def event(self, frame, y_um, x_um, *, filled=None, extra=None, send=True) -> dict:
        """An event with ``frame`` (None: no detector key) and two readbacks (None: missing)."""
        self.seq += 1
        data = {DET: frame, SY: y_um, SX: x_um}
        if extra is not None:
            data.update(extra)
        keys = self.descriptor_doc["data_keys"]
        absent = [k for k, v in data.items() if v is None]
        external = [k for k in absent if "external" in keys.get(k, {})]
        data = {k: v for k, v in data.items() if k not in external}
        doc = self.desc.compose_event(
            data={k: (0.0 if v is None else v) for k, v in data.items()},
            timestamps={k: 0.0 for k in data},
            seq_num=self.seq,
            filled=filled or {},
        )
        for k in absent:  # a malformed event: the key is missing altogether
            doc["data"].pop(k, None)
            doc["timestamps"].pop(k, None)
        if send:
            self.cb("event", doc)
        return doc

    def feed(self, ds, indices, *, send=True) -> list[dict]:
        """Events with the dataset's frames and positions ``indices``."""
        return [self.event(ds.intensities[k], *um(ds, k), send=send) for k in indices]

    def resource(self, directory, name, *, send=True):
        """An AD_HDF5 resource of ``directory/name`` (one frame per point)."""
        res = self.run.compose_resource(
            spec="AD_HDF5",
            root=str(directory),
            resource_path=name,
            resource_kwargs={"frame_per_point": 1},
        )
        if send:
            self.cb("resource", res.resource_doc)
        return res

    def datum_event(self, res, point, y_um, x_um) -> dict:
        """A datum of ``res`` and the event that names it."""
        datum = res.compose_datum(datum_kwargs={"point_number": point})
        self.cb("datum", datum)
        return self.event(datum["datum_id"], y_um, x_um, filled={DET: False})

    def stop(self, exit_status="success", *, send=True) -> dict:
        doc = self.run.compose_stop(exit_status=exit_status)
        if send:
            self.cb("stop", doc)
        return doc


def um(ds, k):
    """Position ``k`` of a simulated dataset in micrometres (the readback unit)."""
    return ds.positions_m[k] / 1e-6


@pytest.fixture(scope="session")
def callback_setup(small_dataset) -> ScanSetup:
    """The small dataset's scan as a ScanSetup with the keys :class:`DocRun` writes."""
    g = small_dataset.geometry
    return ScanSetup(
        energy_eV=g.energy_eV,
        detector_distance_m=g.detector_distance_m,
        detector_pixel_m=g.detector_pixel_m,
        crop=small_dataset.intensities.shape[-1],
        detector_key=DET,
        position_keys=(SY, SX),
        position_scale_m=1e-6,
        nominal_positions_m=small_dataset.nominal_positions_m,
        pattern="raster",
        margin_px=small_dataset.preset.margin_px,
    )


@pytest.fixture
def doc_run() -> type[DocRun]:
    """The :class:`DocRun` class (compose a run's documents)."""
    return DocRun


@pytest.fixture
def make_callback() -> Iterator[Callable[..., PtychoCallback]]:
    """``make_callback(*args, **kwargs)``: a PtychoCallback closed after the test."""
    made: list[PtychoCallback] = []

    def make(*args: Any, **kwargs: Any) -> PtychoCallback:
        cb = PtychoCallback(*args, **kwargs)
        made.append(cb)
        return cb

    yield make
    for cb in made:
        cb.close(timeout=10)


@pytest.fixture
def helpers():
    """``um``, ``data_keys`` and the key names, for tests that compose documents."""
    import types

    return types.SimpleNamespace(um=um, data_keys=det_data_keys, DET=DET, SY=SY, SX=SX)
