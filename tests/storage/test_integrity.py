"""A complete store records what it wrote (zipmap_manifest) and what it was made from (zipmap_fingerprint);
storage.integrity.check_store finds missing, truncated and extra chunks with one listing, on disk and on S3
(moto), and an object-store fault while checking is raised as transient, never reported as damage."""

import json
import os
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import s3fs

from errors import StorageError, TransientError
from storage.integrity import (
    FINGERPRINT_KEY,
    MANIFEST_KEY,
    check_store,
    chunk_keys,
    fingerprint_changes,
    input_files,
    make_fingerprint,
)
from storage.zarr_store import ReconstructionStore, Variable, read_attrs, read_status


def _write(url, opts=None, complete=True):
    """A small store as the pipeline writes one: a group written whole, and a chunked volume-like array
    written region by region (2 x 2 x 1 chunks)."""
    store = ReconstructionStore(url, opts)
    store.begin({"collection_id": "a"})
    store.write_group("views", {"depth": Variable(("view", "y", "x"), np.arange(24, dtype=np.float32).reshape(2, 3, 4),
                                                  chunks=(1, 3, 4)),
                                "name": Variable(("view",), np.array(["a.png", "b.png"]))})
    store.write_group("volume", {"tsdf": Variable(("z", "y", "x"), None, {}, (2, 2, 3), (4, 3, 3), np.float16)})
    for z in (0, 2):
        for y in (0, 2):
            block = np.full((2, min(2, 3 - y), 3), z + y / 10, np.float16)
            store.write_regions("volume", {"tsdf": ((slice(z, z + 2), slice(y, y + 2), slice(0, 3)), block)})
    if complete:
        store.complete({"summary": {"x": 1}})
    return store


def test_chunk_keys_follow_zarr_encodings():
    assert list(chunk_keys((5, 3), (2, 3), {"name": "default", "configuration": {"separator": "/"}})) == [
        "c/0/0", "c/1/0", "c/2/0"]
    assert list(chunk_keys((4,), (2,), {"name": "v2", "configuration": {"separator": "."}})) == ["0", "1"]
    assert list(chunk_keys((), (), {"name": "default"})) == ["c"]
    assert list(chunk_keys((0, 4), (2, 2), {"name": "default"})) == []


def test_complete_records_the_manifest_with_the_status(tmp_path):
    url = str(tmp_path / "a.zarr")
    _write(url)
    attrs = read_attrs(url)
    assert attrs["zipmap_status"] == "complete"
    arrays = attrs[MANIFEST_KEY]["arrays"]
    assert sorted(arrays) == ["views/depth", "views/name", "volume/tsdf"]
    tsdf = arrays["volume/tsdf"]
    assert tsdf["shape"] == [4, 3, 3] and tsdf["chunks"] == [2, 2, 3] and tsdf["num_chunks"] == 4
    on_disk = sorted(p for p in (tmp_path / "a.zarr" / "volume" / "tsdf" / "c").rglob("*") if p.is_file())
    assert tsdf["bytes"] == sum(p.stat().st_size for p in on_disk) > 0
    assert arrays["views/depth"]["num_chunks"] == 2
    check = check_store(url)
    assert check.ok and check.problem() == "", check


def test_missing_truncated_and_extra_chunks_are_found(tmp_path):
    url = str(tmp_path / "a.zarr")
    _write(url)
    root = Path(url)
    (root / "volume/tsdf/c/1/0/0").unlink()
    check = check_store(url)
    assert not check.ok and check.complete and check.missing == {"volume/tsdf": ["c/1/0/0"]}
    assert check.problem() == "missing chunks volume/tsdf c/1/0/0"

    _write(url)  # fresh: truncate one chunk (same keys, fewer bytes)
    chunk = root / "volume/tsdf/c/0/1/0"
    chunk.write_bytes(chunk.read_bytes()[:-3])
    check = check_store(url)
    assert not check.ok and not check.missing and list(check.changed) == ["volume/tsdf"]
    assert check.problem().startswith("changed chunks volume/tsdf: 4 objects, ")

    _write(url)  # fresh: a stray extra chunk object
    (root / "views/depth/c/7/0/0").parent.mkdir(parents=True)
    (root / "views/depth/c/7/0/0").write_bytes(b"x")
    assert list(check_store(url).changed) == ["views/depth"]

    _write(url)  # fresh: a whole array gone, and one chunk of another
    for path in sorted((root / "views/depth").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "views/depth").rmdir()
    (root / "volume/tsdf/c/0/0/0").unlink()
    check = check_store(url)
    assert check.missing == {"views/depth": ["c/0/0/0", "c/1/0/0"], "volume/tsdf": ["c/0/0/0"]}
    assert check.missing_metadata == ["views/depth/zarr.json"]
    assert check.problem() == ("missing chunks views/depth c/0/0/0 (+2 more in 2 arrays); "
                               "missing metadata views/depth/zarr.json")


def test_not_complete_no_manifest_and_no_store(tmp_path):
    url = str(tmp_path / "a.zarr")
    _write(url, complete=False)
    check = check_store(url)
    assert not check.ok and check.problem() == "not complete (zipmap_status='writing')"
    _write(url)
    doc = json.loads((tmp_path / "a.zarr" / "zarr.json").read_text())  # as a store written before manifests
    del doc["attributes"][MANIFEST_KEY]
    (tmp_path / "a.zarr" / "zarr.json").write_text(json.dumps(doc))
    check = check_store(url)
    assert check.complete and not check.ok and check.problem() == "no manifest"
    none = check_store(str(tmp_path / "none.zarr"))
    assert none.status is None and none.problem() == "no store" and not none.ok


def test_complete_refuses_a_store_with_a_chunk_not_written(tmp_path):
    url = str(tmp_path / "a.zarr")
    store = ReconstructionStore(url)
    store.begin({})
    store.write_group("volume", {"tsdf": Variable(("z", "y", "x"), None, {}, (2, 2, 2), (4, 2, 2), np.float16)})
    store.write_regions("volume", {"tsdf": ((slice(0, 2), slice(0, 2), slice(0, 2)), np.zeros((2, 2, 2)))})
    with pytest.raises(StorageError, match=r"1 chunk\(s\) were not written \(first: volume/tsdf c/1/0/0\)"):
        store.complete()
    assert read_status(url) == "writing"


def test_input_files_list_images_and_pose_files_only(tmp_path):
    src = tmp_path / "coll"
    for rel, data in {"images/b.PNG": b"bb", "images/a.jpg": b"a", "cameras.json": b"{}", "sparse/0/images.bin": b"i",
                      "depth/a.npy": b"d", "notes.txt": b"n", ".hidden/c.png": b"h", "_runs/x.png": b"r"}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    files = input_files(str(src))
    assert [f[:2] for f in files] == [["cameras.json", 2], ["images/a.jpg", 1], ["images/b.PNG", 2],
                                      ["sparse/0/images.bin", 1]]
    before = make_fingerprint(files, {"max_voxels": 24}, "w", 1)
    os.utime(src / "images/a.jpg", ns=(1, 1))  # same size, other time: a changed file
    after = make_fingerprint(input_files(str(src)), {"max_voxels": 24}, "w", 1)
    assert before["sha256"] != after["sha256"] and fingerprint_changes(before, after) == ["inputs changed"]
    (src / "depth/a.npy").write_bytes(b"other")  # not an input
    assert make_fingerprint(input_files(str(src)), {"max_voxels": 24}, "w", 1) == after
    assert input_files(str(tmp_path / "missing")) == []


def test_fingerprint_changes_name_each_part():
    base = make_fingerprint([["images/a.png", 1, "t"]], {"max_voxels": 24, "voxel_size": None}, "w1", 1)
    assert fingerprint_changes(base, base) == []
    other = make_fingerprint([["images/a.png", 1, "t"], ["images/b.png", 1, "t"]],
                             {"max_voxels": 64, "voxel_size": 0.5}, "w2", 2)
    assert fingerprint_changes(base, other) == [
        "parameters changed (max_voxels 24 -> 64, voxel_size none -> 0.5)", "inputs changed (2 files, were 1)",
        "weights changed", "format changed (version 1 -> 2)"]
    assert fingerprint_changes(None, base) == ["no fingerprint"]


def test_result_parameters_cover_every_setting():
    """A new setting must be classed as changing the result (fingerprinted) or not."""
    from settings import ReconstructionSettings
    from tasks.integrity import NOT_RESULT_PARAMETERS, RESULT_PARAMETERS

    assert sorted(RESULT_PARAMETERS + NOT_RESULT_PARAMETERS) == sorted(f.name for f in fields(ReconstructionSettings))


def test_check_on_s3_and_a_fault_while_checking_is_transient(s3_bucket, tmp_path):
    bucket, opts = s3_bucket
    url = f"s3://{bucket}/out/a.zarr"
    _write(url, opts)
    attrs = read_attrs(url, opts)
    assert attrs[MANIFEST_KEY]["arrays"]["volume/tsdf"]["num_chunks"] == 4 and check_store(url, opts).ok
    fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
    fs.rm(f"{bucket}/out/a.zarr/volume/tsdf/c/1/1/0")
    assert check_store(url, opts).problem() == "missing chunks volume/tsdf c/1/1/0"
    fs.pipe_file(f"{bucket}/in/images/a.png", b"png")
    [(rel, size, etag)] = input_files(f"s3://{bucket}/in", opts)
    assert (rel, size) == ("images/a.png", 3) and etag == fs.info(f"{bucket}/in/images/a.png")["ETag"].strip('"')

    # nothing listens on this port: the check cannot list, which is a fault to retry, not damage
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    down = {**opts, "client_kwargs": {"endpoint_url": dead}, "config_kwargs": {"retries": {"total_max_attempts": 1}},
            "skip_instance_cache": True}
    with pytest.raises(TransientError):
        check_store(url, down, attrs=attrs)
    with pytest.raises(TransientError):
        input_files(f"s3://{bucket}/in", down)
    assert FINGERPRINT_KEY not in attrs  # this store was not written by a run (tasks.stages records it)
