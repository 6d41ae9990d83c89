"""The device's one path check (``tango_device.views.confine``): Save, Replay, Follow, probe_init.

Real directories, files and symbolic links; the refusal must not depend on whether the file
exists (no existence oracle).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bluesky_ptycho.tango_device.views import confine, resolve_inside


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    data = tmp_path / "data"
    more = tmp_path / "more"
    secret = tmp_path / "secret"
    for d in (data, more, secret):
        d.mkdir()
    (data / "scan.cxi").write_bytes(b"x")
    (secret / "real.h5").write_bytes(b"x")
    (data / "escape").symlink_to(secret)
    return data, more, secret


def test_paths_inside_any_data_directory_are_accepted(dirs: tuple[Path, Path, Path]) -> None:
    data, more, _ = dirs
    assert confine("scan.cxi", [data, more]) == (data / "scan.cxi").resolve()
    assert confine(str(more / "sub" / "x.h5"), [data, more]) == (more / "sub" / "x.h5").resolve()
    assert confine(f"{data}/a/../scan.cxi", [data]) == (data / "scan.cxi").resolve()


@pytest.mark.parametrize(
    "make",
    [
        lambda d, s: str(s / "real.h5"),  # exists, outside
        lambda d, s: str(s / "missing.h5"),  # does not exist, outside
        lambda d, s: "../secret/real.h5",
        lambda d, s: "../secret/missing.h5",
        lambda d, s: "escape/real.h5",  # a symbolic link pointing out
        lambda d, s: "escape/missing.h5",
        lambda d, s: "/etc/passwd",
        lambda d, s: str(d),  # the directory itself
    ],
)
def test_paths_elsewhere_are_refused(dirs: tuple[Path, Path, Path], make: object) -> None:
    data, _, secret = dirs
    text = make(data, secret)  # type: ignore[operator]
    with pytest.raises(ValueError, match="not a file inside the data directories") as info:
        confine(text, [data])
    assert "exist" not in str(info.value)


def test_the_refusal_is_the_same_whether_the_file_exists_or_not(
    dirs: tuple[Path, Path, Path],
) -> None:
    data, _, secret = dirs
    messages = []
    for name in ("real.h5", "missing.h5"):
        with pytest.raises(ValueError) as info:
            confine(str(secret / name), [data])
        messages.append(str(info.value).replace(name, "NAME"))
    assert messages[0] == messages[1]


def test_no_directory_configured_refuses_everything(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no data directories are configured.*DataDirectories"):
        confine(str(tmp_path / "x.cxi"), [])
    with pytest.raises(ValueError, match="no data directories"):
        confine("x.cxi", ["", "  "])


def test_save_uses_the_same_check(dirs: tuple[Path, Path, Path]) -> None:
    data, _, _ = dirs
    assert resolve_inside(data, "out/r.h5") == (data / "out" / "r.h5").resolve()
    with pytest.raises(ValueError, match="not a file inside the output directory"):
        resolve_inside(data, "escape/r.h5")
    with pytest.raises(ValueError, match="no output directory"):
        resolve_inside("", "r.h5")
