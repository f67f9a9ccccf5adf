"""Reading collections: the format, from local folders and S3, and errors that name the file."""

import json
import re

import numpy as np
import pytest

from errors import InputError
from model.synthetic import generate_sample, write_collection
from storage.collection import read_collection


@pytest.fixture()
def collection(tmp_path):
    return write_collection(str(tmp_path / "c"), 3, "orbit", 3, 28, 42)


def test_reads_what_the_generator_wrote(collection):
    coll = read_collection(collection)
    sample = generate_sample(3, "orbit", 3, 28, 42)
    assert coll.names == ("000.png", "001.png", "002.png") and coll.stacked_images().shape == (3, 28, 42, 3)
    assert coll.source_format == "zipmap" and coll.units == "m" and coll.crs is None
    np.testing.assert_allclose(coll.stacked_images() / 255.0, sample["images"].transpose(0, 2, 3, 1),
                               atol=0.6 / 255)
    np.testing.assert_array_equal(coll.stacked_depth(), sample["depth"])
    assert coll.cam_from_world.dtype == np.float64 and coll.intrinsics.dtype == np.float64
    np.testing.assert_array_equal(coll.cam_from_world, sample["cam_from_world"])  # float64, no float32 detour
    np.testing.assert_array_equal(coll.intrinsics, sample["intrinsics"])
    assert [i["path"] for i in coll.image_info] == [f"{collection}/images/{n}" for n in coll.names]
    assert all(i["format"] == "PNG" and i["width"] == 42 and i["height"] == 28 for i in coll.image_info)


def test_reads_from_s3(s3_bucket):
    bucket, opts = s3_bucket
    url = write_collection(f"s3://{bucket}/city/c1", 4, "street", 2, 28, 42, storage_options=opts)
    coll = read_collection(url, storage_options=opts)
    assert coll.num_frames == 2 and coll.stacked_depth().shape == (2, 28, 42) and coll.cam_from_world.shape == (2, 3, 4)
    assert coll.image_info[0]["path"] == f"{url}/images/000.png"


def test_images_only_and_case_insensitive_extensions(tmp_path, collection):
    import shutil
    from pathlib import Path

    src = Path(collection)
    dst = tmp_path / "plain"
    (dst / "images").mkdir(parents=True)
    for i, p in enumerate(sorted((src / "images").iterdir())):
        shutil.copy(p, dst / "images" / f"f{i}.PNG")
    coll = read_collection(str(dst))
    assert coll.num_frames == 3 and coll.cam_from_world is None and coll.depth is None
    assert coll.source_format == "images" and coll.units is None and coll.names == ("f0.PNG", "f1.PNG", "f2.PNG")


def _break(path, rel, content):
    target = path / rel
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content)


@pytest.mark.parametrize("rel, content, message", [
    ("images/001.png", b"not a png", "images/001.png: not an image"),
    ("images/001.png", b"", "images/001.png: empty file"),
    ("cameras.json", "{broken", "cameras.json: not valid JSON"),
    ("cameras.json", json.dumps({"version": 1, "frames": []}),
     "cameras.json: no camera in cameras.json for images/000.png"),
    ("cameras.json", json.dumps({"version": 2, "frames": []}), "cameras.json: expected {'version': 1"),
])
def test_bad_files_are_named(collection, rel, content, message):
    from pathlib import Path

    _break(Path(collection), rel, content)
    with pytest.raises(InputError, match="^" + re.escape(f"{collection}/{message}")):
        read_collection(collection)


def test_bad_depth_is_named(collection):
    from pathlib import Path

    np.save(Path(collection) / "depth" / "002.npy", np.zeros((5, 5), np.float32))
    with pytest.raises(InputError, match=r"depth/002.npy: shape \(5, 5\)"):
        read_collection(collection)
    (Path(collection) / "depth" / "002.npy").unlink()
    with pytest.raises(InputError, match="depth/002.npy: missing"):
        read_collection(collection)


def test_no_images_folder(tmp_path):
    with pytest.raises(InputError, match="no images/ folder"):
        read_collection(str(tmp_path))
