"""Reading collections: the format, from local folders and S3, and errors that name the file."""

import json

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
    assert coll.names == ("000.png", "001.png", "002.png") and coll.images.shape == (3, 28, 42, 3)
    np.testing.assert_allclose(coll.images / 255.0, sample["images"].transpose(0, 2, 3, 1), atol=0.6 / 255)
    np.testing.assert_array_equal(coll.depth, sample["depth"])
    np.testing.assert_allclose(coll.cam_from_world, sample["cam_from_world"])
    np.testing.assert_allclose(coll.intrinsics, sample["intrinsics"])


def test_reads_from_s3(s3_bucket):
    bucket, opts = s3_bucket
    url = write_collection(f"s3://{bucket}/city/c1", 4, "street", 2, 28, 42, storage_options=opts)
    coll = read_collection(url, storage_options=opts)
    assert coll.num_frames == 2 and coll.depth.shape == (2, 28, 42) and coll.cam_from_world.shape == (2, 3, 4)


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


def _break(path, rel, content):
    target = path / rel
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content)


@pytest.mark.parametrize("rel, content, message", [
    ("images/001.png", b"not a png", "images/001.png: not a readable image"),
    ("cameras.json", "{broken", "cameras.json: not valid JSON"),
    ("cameras.json", json.dumps({"version": 1, "frames": []}), "cameras.json: no camera for images/000.png"),
    ("cameras.json", json.dumps({"version": 2, "frames": []}), "expected {'version': 1"),
])
def test_bad_files_are_named(collection, rel, content, message):
    from pathlib import Path

    _break(Path(collection), rel, content)
    with pytest.raises(InputError, match=message.replace("{", r"\{").replace("(", r"\(")):
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
