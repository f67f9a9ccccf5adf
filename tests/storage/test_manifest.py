"""``zipmap manifest``: collections under a prefix (local and S3), nested, malformed and unsafe names, --since."""

import os
import re
import time

import pandas as pd
import pytest
import s3fs

from cli import main
from errors import InputError
from storage.manifest import list_collections, parse_since
from storage.tables import read_manifest
from validation.suites import SAFE_ID_PATTERN

PNG = bytes.fromhex("89504e470d0a1a0a")  # listing looks at names, not contents


def _touch(path, data=PNG, mtime=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def _tree(root, mtime=None):
    """A city prefix: nested collections in three formats, unsafe names, malformed and ignored folders."""
    files = [
        "district-1/block-7/images/000.png", "district-1/block-7/images/001.png", "district-1/block-7/cameras.json",
        "district-1/block-8/images/a.JPG", "district-1/block-8/transforms.json",
        "district-2/survey 2026#3/images/x.jpeg", "district-2/survey 2026#3/sparse/0/cameras.bin",
        "district-2/survey 2026#3/sparse/0/images.bin",
        "district-2/Überstraße/images/0.png",  # non-ASCII name
        "a b/c/images/0.png", "a_b/c/images/0.png",  # both map to a_b--c before hashing
        "deep/er/still/deeper/images/0.png",
        "block-9/images/0.png", "block-9/images/sub/images/0.png",  # nested inside a collection: not its own
        "empty-images/images/readme.txt",  # malformed: images/ without images
        "poses-only/cameras.json",  # malformed: a pose file, no images
        ".hidden/images/0.png", "_runs/r1/images/0.png", "out/c1.zarr/images/0.png",  # never collections
        "notes.txt",
    ]
    for f in files:
        _touch(os.path.join(root, f), mtime=mtime)
    return root


def test_lists_nested_collections_with_safe_distinct_ids(tmp_path):
    root = _tree(str(tmp_path / "city"))
    listing = list_collections(root)
    t = listing.table.set_index("source")
    expected = {
        "district-1/block-7": ("district-1--block-7", "zipmap", 2),
        "district-1/block-8": ("district-1--block-8", "nerfstudio", 1),
        "district-2/survey 2026#3": ("district-2--survey_2026_3", "colmap", 1),
        "deep/er/still/deeper": ("deep--er--still--deeper", "images", 1),
        "block-9": ("block-9", "images", 1),
    }
    for rel, (ident, fmt, n) in expected.items():
        row = t.loc[f"{root}/{rel}"]
        assert (row["collection_id"], row["format"], row["num_images"]) == (ident, fmt, n)
    assert len(t) == len(expected) + 3  # + Überstraße, a b/c, a_b/c
    ids = list(listing.table["collection_id"])
    assert len(set(ids)) == len(ids)
    assert all(re.match(SAFE_ID_PATTERN, i) for i in ids), ids
    collided = [t.loc[f"{root}/a b/c", "collection_id"], t.loc[f"{root}/a_b/c", "collection_id"]]
    assert collided[0] != collided[1] and all(re.fullmatch(r"a_b--c-[0-9a-f]{8}", c) for c in collided)
    assert t.loc[f"{root}/district-2/Überstraße", "collection_id"].startswith("district-2--")
    assert not any(s.startswith(f"{root}/block-9/") for s in t.index)  # nothing inside a collection
    assert not any(p in s for s in t.index for p in (".hidden", "_runs", ".zarr"))
    skipped = dict(listing.skipped)
    assert set(skipped) == {f"{root}/empty-images", f"{root}/poses-only"}
    assert "no .png/.jpg/.jpeg images" in skipped[f"{root}/empty-images"]
    assert "pose file" in skipped[f"{root}/poses-only"]


def test_prefix_that_is_one_collection(tmp_path):
    root = str(tmp_path / "single")
    _touch(f"{root}/images/0.png")
    table = list_collections(root).table
    assert list(table["collection_id"]) == ["single"] and list(table["source"]) == [root]


def test_since_keeps_only_changed_collections(tmp_path):
    root = _tree(str(tmp_path / "city"), mtime=time.time() - 3 * 86400)
    _touch(f"{root}/district-1/block-7/images/002.png")  # a new image in an old collection
    _touch(f"{root}/new-block/images/0.png")
    table = list_collections(root, since="1d").table
    assert set(table["collection_id"]) == {"district-1--block-7", "new-block"}
    assert len(list_collections(root, since="2020-01-01").table) == 9  # all 8 + new-block
    assert len(list_collections(root, since=pd.Timestamp.now(tz="UTC").isoformat()).table) == 0


def test_parse_since():
    now = pd.Timestamp("2026-11-25T12:00:00Z")
    assert parse_since("24h", now) == pd.Timestamp("2026-11-24T12:00:00Z")
    assert parse_since("90m", now) == pd.Timestamp("2026-11-25T10:30:00Z")
    assert parse_since("2w", now) == pd.Timestamp("2026-11-11T12:00:00Z")
    assert parse_since("2026-11-24T02:00") == pd.Timestamp("2026-11-24T02:00:00Z")  # no zone: UTC
    assert parse_since("2026-11-24T03:00+01:00") == pd.Timestamp("2026-11-24T02:00:00Z")
    assert parse_since(None) is None
    with pytest.raises(InputError, match="--since 'yesterday-ish'"):
        parse_since("yesterday-ish")


def test_missing_prefix_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        list_collections(str(tmp_path / "nope"))


def test_cli_on_s3_with_since(s3_bucket, tmp_path, capsys, monkeypatch):
    bucket, opts = s3_bucket
    fs = s3fs.S3FileSystem(**opts)
    for f in ("city/d1/b1/images/0.png", "city/d1/b1/cameras.json", "city/d1/b 2/images/0.jpg",
              "city/broken/images/x.txt"):
        fs.pipe_file(f"{bucket}/{f}", PNG)
    time.sleep(1.1)  # S3 times are whole seconds
    cutoff = pd.Timestamp.now(tz="UTC")
    time.sleep(1.1)
    fs.pipe_file(f"{bucket}/city/d2/b3/images/0.png", PNG)
    options = tmp_path / "opts.json"
    options.write_text(pd.io.json.ujson_dumps(opts))
    out = tmp_path / "m.parquet"
    assert main(["manifest", f"s3://{bucket}/city/", str(out), "--storage-options", str(options)]) == 0
    captured = capsys.readouterr()
    assert "3 collection(s)" in captured.out and f"skipped s3://{bucket}/city/broken" in captured.err
    m = read_manifest(str(out))
    assert list(m["collection_id"]) == ["d1--b1", "d1--b_2", "d2--b3"]
    assert list(m["source"]) == [f"s3://{bucket}/city/d1/b1", f"s3://{bucket}/city/d1/b 2",
                                 f"s3://{bucket}/city/d2/b3"]
    assert list(m["format"]) == ["zipmap", "images", "images"]
    new = tmp_path / "new.csv"
    assert main(["manifest", f"s3://{bucket}/city", str(new), "--since", cutoff.isoformat(),
                 "--storage-options", str(options)]) == 0
    assert list(read_manifest(str(new))["collection_id"]) == ["d2--b3"]
    assert main(["manifest", f"s3://{bucket}/nothing-here", str(new), "--storage-options", str(options)]) == 2
    assert "no such folder" in capsys.readouterr().err
