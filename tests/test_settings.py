"""A run's settings: one typed object, every value checked once, in one line, without torch."""

import subprocess
import sys

import pytest

from errors import ConfigError
from settings import ReconstructionSettings


def test_defaults_and_round_trip():
    s = ReconstructionSettings()
    assert s.refine_poses == "auto" and s.max_voxels == 128 and s.weights is None
    assert ReconstructionSettings.from_dict(s.to_dict()) == s
    # flow parameters arrive as plain JSON: integers for floats, empty strings for "not given"
    t = ReconstructionSettings.from_dict({"voxel_size": 2, "weights": "", "preset": "main", "device": ""})
    assert t.voxel_size == 2.0 and isinstance(t.voxel_size, float) and t.weights is None and t.device is None


@pytest.mark.parametrize("values, message", [
    ({"voxel_size": 0.0}, "voxel size must be a positive number"),
    ({"voxel_size": float("nan")}, "voxel size must be a positive number"),
    ({"voxel_size": True}, "voxel size must be a positive number"),
    ({"max_voxels": 3}, "max voxels must be an integer from 4 to 2048"),
    ({"max_voxels": 12.5}, "max voxels must be an integer"),
    ({"truncation_voxels": 0.1}, "truncation must be 0.5 to 64 voxels"),
    ({"max_offline_frames": 0}, "max offline frames must be a positive integer"),
    ({"refine_poses": "sometimes"}, "pose refinement must be one of auto, on, off"),
    ({"device": "gpu"}, "device must be cpu, cuda or cuda:N"),
    ({"device": "cuda:x"}, "device must be cpu, cuda or cuda:N"),
    ({"preset": "huge"}, "unknown preset 'huge'"),
])
def test_bad_values_fail_in_one_line(values, message):
    with pytest.raises(ConfigError, match=message) as info:
        ReconstructionSettings(**values)
    assert "\n" not in str(info.value)


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match=r"unknown reconstruction setting\(s\) \['voxels'\]"):
        ReconstructionSettings.from_dict({"voxels": 3})


def test_checks_that_hold_only_where_the_stages_run(tmp_path):
    remote = ReconstructionSettings(weights="/only/on/the/workers/checkpoint_aff_inv.pt")  # form only
    with pytest.raises(ConfigError, match="checkpoint file not found"):
        remote.check_here()
    with pytest.raises(ConfigError, match="must be a file, not a folder"):
        ReconstructionSettings(weights=str(tmp_path)).check_here()
    assert ReconstructionSettings(weights="s3://bucket/checkpoint_aff_inv.pt").check_here().weights  # read later
    assert ReconstructionSettings(device="cuda").device == "cuda"  # a GPU cluster may run it


def test_checked_without_torch():
    code = ("import sys\nfrom settings import ReconstructionSettings\n"
            "ReconstructionSettings(preset='main', voxel_size=0.5, device='cpu', refine_poses='on')\n"
            "print(sorted(m for m in ('torch', 'prefect', 'dask') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
