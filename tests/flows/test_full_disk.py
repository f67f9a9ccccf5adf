"""A full disk ends a run in one clear line naming the path; no row of a batch is lost.

OUT lies on a real tmpfs a few pages large (mounting needs root: the tests run as root in CI). ``zipmap
reconstruct`` must end in one ``error:`` line naming the store (no traceback) and leave the store marked
``failed``, never ``writing``; ``zipmap batch`` must say in one line where its summary went instead (the local
fallback) and the summary there must hold every row.
"""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from model.synthetic import write_collection
from storage.zarr_store import read_status


@pytest.fixture()
def small_disk(tmp_path):
    """A mounted tmpfs: ``mount(size)`` returns its path; unmounted afterwards."""
    mounted = []

    def mount(size: str) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (root needed): {proc.stderr.strip()}")
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in mounted:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _zipmap(*args, env=None, cwd=None):
    script = Path(sys.executable).with_name("zipmap")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=900, env=env, cwd=cwd)


def _fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` up to ``leave`` bytes free."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "ballast", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


@pytest.mark.slow
def test_reconstruct_on_a_full_disk_ends_in_one_line_naming_the_store(tmp_path, small_disk):
    src = write_collection(str(tmp_path / "src"), 77, "orbit", 4, 56, 84)
    disk = small_disk("160k")  # room for the store's first documents, not for its arrays
    proc = _zipmap("reconstruct", src, str(disk / "out"), "--id", "c0", "--max-voxels", "16",
                   "--refine-poses", "off")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert str(disk / "out" / "c0.zarr") in errors[0] and "No space left on device" in errors[0], errors[0]
    assert read_status(str(disk / "out" / "c0.zarr")) == "failed"  # never left "writing"


@pytest.mark.slow
def test_batch_on_a_full_disk_keeps_every_row_at_the_fallback(tmp_path, small_disk):
    rows = [{"collection_id": f"c{k}", "source": write_collection(str(tmp_path / f"src{k}"), 80 + k, "orbit", 4,
                                                                  56, 84)} for k in range(2)]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    disk = small_disk("1m")
    out = disk / "out"
    out.mkdir()
    _fill(disk, leave=0)  # full
    fallback = tmp_path / "fallback"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(HOME=str(tmp_path / "home"), ZIPMAP_FALLBACK_DIR=str(fallback), ZIPMAP_RETRY_PATIENCE="0")
    proc = _zipmap("batch", str(manifest), str(out), "--max-voxels", "16", "--workers", "1", "--run-id", "full",
                   "--refine-poses", "off", env=env, cwd=tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stderr  # the collections failed; the command itself ended cleanly
    where = fallback / "full" / "summary.parquet"
    said = [line for line in proc.stdout.splitlines() if "could not be written" in line]
    assert len(said) == 1 and str(where) in said[0] and str(out / "_runs" / "full") in said[0], proc.stdout
    summary = pd.read_parquet(where)
    assert sorted(summary["collection_id"]) == ["c0", "c1"]
    for _, row in summary.iterrows():
        assert row["status"] == "failed"
        assert str(out) in row["reason"], row["reason"]  # the path that could not be written (the claim or store)
        assert "No space left on device" in row["reason"], row["reason"]
        assert read_status(str(out / f"{row['collection_id']}.zarr")) in (None, "failed")
    assert not (out / "_runs" / "full" / "summary.parquet").exists()  # no empty or truncated table left behind
