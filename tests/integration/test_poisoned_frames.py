"""A frame carrying detector flag values does not spoil the reconstruction (issue 10, part 4).

Eiger and other photon-counting detectors write the largest value of the frame's integer dtype
(2**32-1 in uint32 frames) for bad pixels. One frame with four such pixels took the object
error from 0.25 to 0.97 before; the preprocessing now masks them, so a scan with one poisoned
frame ends as the clean scan does.
"""

from __future__ import annotations

import event_model
import numpy as np

from bluesky_ptycho.callback import PtychoCallback
from bluesky_ptycho.live import LiveOptions, PacingPolicy
from bluesky_ptycho.metrics import illuminated_region, object_error
from bluesky_ptycho.setup import ScanSetup


def _run(ds, frames: np.ndarray):
    g = ds.geometry
    setup = ScanSetup(
        energy_eV=g.energy_eV,
        detector_distance_m=g.detector_distance_m,
        detector_pixel_m=g.detector_pixel_m,
        crop=frames.shape[-1],
        detector_key="det_image",
        position_keys=("sy", "sx"),
        position_scale_m=1e-6,
        nominal_positions_m=ds.nominal_positions_m,
        margin_px=ds.preset.margin_px,
    )
    # no iterations while the frames arrive: the result depends on the data only
    options = LiveOptions(pacing=PacingPolicy(passes_per_batch=0), final_passes=40)
    cb = PtychoCallback(options=options)
    run = event_model.compose_run(metadata={"ptycho": setup.to_start_doc()})
    cb("start", run.start_doc)
    keys = {
        "det_image": {"source": "sim", "dtype": "array", "shape": list(frames.shape[1:])},
        "sy": {"source": "sim", "dtype": "number", "shape": []},
        "sx": {"source": "sim", "dtype": "number", "shape": []},
    }
    desc = run.compose_descriptor(name="primary", data_keys=keys)
    cb("descriptor", desc.descriptor_doc)
    for k in range(frames.shape[0]):
        y_um, x_um = ds.positions_m[k] * 1e6
        cb(
            "event",
            desc.compose_event(
                data={"det_image": frames[k], "sy": y_um, "sx": x_um},
                timestamps={"det_image": 0.0, "sy": 0.0, "sx": 0.0},
                seq_num=k + 1,
            ),
        )
    cb("stop", run.compose_stop())
    return cb.result(timeout=120), cb


def test_one_poisoned_frame_ends_within_ten_percent_of_the_clean_scan(small_dataset):
    ds = small_dataset
    clean = np.rint(ds.intensities).astype(np.uint32)
    poisoned = clean.copy()
    flag = np.uint32(2**32 - 1)
    poisoned[40, 30, 30] = poisoned[40, 31, 33] = poisoned[40, 10, 50] = poisoned[40, 60, 2] = flag
    region = illuminated_region(ds.probe, ds.positions_px, ds.object.shape, threshold=0.3)
    clean_state, _ = _run(ds, clean)
    bad_state, cb = _run(ds, poisoned)
    assert cb.status.rejected == 0 and bad_state.n_patterns == clean.shape[0]  # the frame kept
    clean_err = object_error(clean_state.object, ds.object, region=region)
    bad_err = object_error(bad_state.object, ds.object, region=region)
    assert clean_err < 0.1
    assert bad_err < 1.1 * clean_err, (bad_err, clean_err)
