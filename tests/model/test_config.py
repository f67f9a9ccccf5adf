"""Configs: presets, validation, JSON round trips."""

import pytest

from errors import ConfigError
from model.config import OFFICIAL_CHECKPOINTS, PRESETS, ZipMapConfig, get_config


def test_official_defaults_are_the_published_size():
    cfg = ZipMapConfig()
    assert (cfg.embed_dim, cfg.depth, cfg.patch_size, cfg.img_size) == (1024, 24, 14, 518)
    assert (cfg.ttt_head_dim, cfg.ttt_hidden_dim, cfg.ttt_muon_steps, cfg.ttt_base_lr) == (1024, 2048, 5, 0.01)
    assert cfg.ns_dtype == "bfloat16" and cfg.patch_embed == "dinov2" and cfg.num_register_tokens == 4
    assert set(OFFICIAL_CHECKPOINTS) <= set(PRESETS)
    assert get_config("streaming").camera_head == "mlp" and get_config("streaming").default_window == 1
    assert not get_config("ref_view").affine_invariant and get_config("main").affine_invariant
    assert get_config("state_query").enable_nvs


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name):
    cfg = PRESETS[name]
    assert ZipMapConfig.from_json(cfg.to_json()) == cfg


def test_unknown_keys_and_bad_values_are_named():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['embed_dims'\]"):
        ZipMapConfig.from_dict({"embed_dims": 3})
    with pytest.raises(ConfigError, match="depth must be int"):
        ZipMapConfig.from_dict({"depth": "24"})
    with pytest.raises(ConfigError, match="ns_dtype='float16'"):
        ZipMapConfig(ns_dtype="float16")
    with pytest.raises(ConfigError, match="not divisible by num_heads"):
        ZipMapConfig(embed_dim=100, num_heads=16)
    with pytest.raises(ConfigError, match="outside depth"):
        ZipMapConfig(depth=4)
    with pytest.raises(ConfigError, match="unknown ZipMap preset 'mian'"):
        get_config("mian")
    assert ZipMapConfig.from_dict({"ttt_base_lr": 1}).ttt_base_lr == 1.0
