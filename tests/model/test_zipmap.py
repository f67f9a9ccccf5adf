"""The assembled network in every mode, on tiny configurations (float64 where exactness matters)."""

import pytest
import torch

from errors import InputError
from model import SceneState, ZipMap, get_config
from model.geometry import plucker_rays


def _model(preset, **overrides):
    """A float64 model whose residual branches matter (layer scale 0.5, not the 0.01 init), so
    that cross-frame effects are large enough to test."""
    torch.manual_seed(0)
    model = ZipMap(get_config(preset, ns_dtype="input", **overrides)).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ls1.gamma", "ls2.gamma")):
                p.fill_(0.5)
    return model


def _images(S, H=28, W=42, seed=1):
    return torch.rand(1, S, 3, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rays(T, H=28, W=42):
    g = torch.Generator().manual_seed(3)
    ext = torch.cat([torch.eye(3, dtype=torch.float64).expand(T, 3, 3),
                     torch.randn(T, 3, 1, generator=g, dtype=torch.float64)], -1)
    K = torch.tensor([[40.0, 0, W / 2], [0, 40.0, H / 2], [0, 0, 1]], dtype=torch.float64).expand(T, 3, 3)
    return plucker_rays(ext, K, (H, W))[None]


@torch.no_grad()
@pytest.mark.parametrize("preset", ["tiny", "tiny_ref_view", "tiny_streaming", "tiny_state_query"])
def test_output_shapes(preset):
    model = _model(preset)
    out = model(_images(3))
    assert out["pose_enc"].shape == (1, 3, 9)
    assert out["depth"].shape == (1, 3, 28, 42, 1) and out["depth_conf"].shape == (1, 3, 28, 42)
    assert out["local_points"].shape == (1, 3, 28, 42, 3)
    assert (out["depth"] > 0).all() and (out["depth_conf"] > 1).all() and (out["pose_enc"][..., 7:] >= 0).all()
    assert isinstance(out["state"], SceneState) and out["state"].num_layers == model.cfg.depth


@torch.no_grad()
def test_unbatched_input_and_float32():
    model = ZipMap(get_config("tiny")).eval()
    out = model(torch.rand(2, 3, 28, 28))
    assert out["depth"].shape == (1, 2, 28, 28, 1) and out["depth"].dtype == torch.float32


@torch.no_grad()
def test_reference_view_tokens_matter_only_without_affine_invariance():
    imgs = _images(3)
    for preset, differs in (("tiny", False), ("tiny_ref_view", True)):
        model = _model(preset)
        b = model(imgs)["pose_enc"]
        # change only the reference-frame slot (not by a constant: LayerNorm would remove it)
        model.aggregator.camera_token[:, 0] += torch.randn(model.cfg.embed_dim, dtype=torch.float64)
        a = model(imgs)["pose_enc"]
        assert (not torch.allclose(a, b)) == differs, preset


@torch.no_grad()
def test_offline_pass_is_bidirectional_and_streaming_is_causal():
    model = _model("tiny_streaming")
    imgs = _images(4)
    changed = imgs.clone()
    changed[:, 3] = 1 - changed[:, 3]
    for window, first_frame_changes in ((0, True), (1, False), (2, False)):
        a = model(imgs, window=window)["depth"][:, 0]
        b = model(changed, window=window)["depth"][:, 0]
        assert (not torch.allclose(a, b)) == first_frame_changes, window


@torch.no_grad()
def test_state_carry_equals_one_long_call():
    model = _model("tiny_streaming")
    imgs = _images(6)
    whole = model(imgs, window=2)
    state, parts = None, []
    for s in range(0, 6, 2):
        out = model(imgs[:, s:s + 2], window=2, state=state)
        state = out["state"]
        parts.append(out)

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    # Each call re-projects columns to the norms its incoming state had (as the reference does),
    # which differ from the first call's by ~1e-5 relative: the split run equals one long call
    # to that level, far closer than a continuation that forgets the carried state.
    fresh = model(imgs[:, 4:6], window=2)
    for key in ("pose_enc", "depth", "local_points"):
        split = torch.cat([p[key] for p in parts], dim=1)
        err = rel(split, whole[key])
        assert err < 1e-5, (key, err)
        assert rel(fresh[key], whole[key][:, 4:6]) > 100 * err, key
    for carried, one, forgot in zip(state.layers, whole["state"].layers, fresh["state"].layers):
        for wc, wo, wf in zip(carried, one, forgot):
            assert rel(wc, wo) < 1e-4 and rel(wf, wo) > 1e-2


@torch.no_grad()
def test_state_query_and_render_from_stored_state():
    model = _model("tiny_state_query")
    imgs, rays = _images(3), _rays(2)
    out = model(imgs, query_rays=rays)
    assert out["nvs_pred"].shape == (1, 2, 28, 42, 4) and out["nvs_depth_conf"].shape == (1, 2, 28, 42)
    rgb = out["nvs_pred"][..., :3]
    assert (rgb >= 0).all() and (rgb <= 1).all() and (out["nvs_pred"][..., 3] > 0).all()
    # queries do not change the reconstruction of the images themselves
    torch.testing.assert_close(model(imgs)["depth"], out["depth"])
    # the stored state alone answers the same queries, in chunks too
    for chunk in (1, 50):
        rendered = model.render(out["state"], rays, chunk=chunk)
        torch.testing.assert_close(rendered["nvs_pred"], out["nvs_pred"])
        torch.testing.assert_close(rendered["nvs_depth_conf"], out["nvs_depth_conf"])


@torch.no_grad()
def test_state_size_is_independent_of_frame_count_and_serialises():
    model = _model("tiny_state_query")
    small, large = model(_images(2))["state"], model(_images(7))["state"]
    cfg = model.cfg
    expected = cfg.depth * 3 * cfg.ttt_head_dim * cfg.ttt_hidden_dim * cfg.ttt_num_heads * 8
    assert small.nbytes == large.nbytes == expected
    arrays = large.to_arrays()
    assert set(arrays) == {f"{i}.w{j}" for i in range(cfg.depth) for j in range(3)}
    back = SceneState.from_arrays(arrays, dtype=torch.float64)
    rays = _rays(1)
    torch.testing.assert_close(model.render(back, rays)["nvs_pred"], model.render(large, rays)["nvs_pred"])
    assert large.to(dtype=torch.float32).nbytes == expected // 2
    arrays.pop("0.w1")
    with pytest.raises(InputError, match="missing"):
        SceneState.from_arrays(arrays)


@torch.no_grad()
def test_quadratic_baseline_runs_and_rejects_streaming():
    model = _model("tiny", global_mixer="attention")
    out = model(_images(3))
    assert out["depth"].shape == (1, 3, 28, 42, 1) and out["state"] is None
    assert "global_blocks.0.attn.qkv.weight" in {k.split("aggregator.")[-1] for k in model.state_dict()}
    with pytest.raises(ValueError, match="offline"):
        model(_images(3), window=1)


@torch.no_grad()
def test_bad_inputs_are_named():
    model = _model("tiny")
    with pytest.raises(InputError, match="multiples of 14, got 30x42"):
        model(_images(2, H=30))
    with pytest.raises(InputError, match=r"expected \[B, S, 3, H, W\]"):
        model(torch.rand(1, 2, 4, 28, 28, dtype=torch.float64))
    with pytest.raises(InputError, match="no ray-query head"):
        model(_images(2), query_rays=_rays(1))


def test_gradients_flow_through_the_zip_pass():
    model = ZipMap(get_config("tiny", ns_dtype="float32"))
    out = model(torch.rand(1, 2, 3, 28, 28))
    (out["depth"].mean() + out["pose_enc"].mean()).backward()
    g = model.aggregator.global_blocks[0].ttt_block.w0.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


# --- the reference-matching camera input (our addition for small models) ---

def test_reference_match_reads_a_known_shift():
    """Frame 1 shows frame 0's content moved one patch column: every patch is found one column over
    in the reference, so the fitted displacement is one patch (in units of the longer side) in x."""
    from model.heads.camera import ReferenceMatch

    h, w, d = 4, 6, 32
    g = torch.Generator().manual_seed(0)
    f0 = torch.nn.functional.normalize(torch.randn(h, w, d, generator=g), dim=-1) * 30  # sharp softmax
    f1 = torch.roll(f0, shifts=-1, dims=1)  # f1[:, x] = f0[:, x + 1]
    f1[:, -1] = 0  # the column that would wrap around matches nothing in particular
    f = torch.stack([f0, f1]).reshape(1, 2, h * w, d)
    stats = ReferenceMatch(d).match_stats(f, h, w)[0]  # [2, 15]
    coef = stats[:, :12].reshape(2, 6, 2)
    torch.testing.assert_close(coef[0], torch.zeros(6, 2), atol=1e-4, rtol=0)  # the reference matches itself
    assert abs(coef[1, 0, 0].item() - 1 / w) < 0.02 and abs(coef[1, 0, 1].item()) < 0.02
    assert stats[1, 12] < stats[0, 12]  # the unmatched column lowers the mean confidence


def test_reference_match_starts_neutral_and_round_trips(tmp_path):
    """Added to trained weights the module changes nothing until trained; its flag travels with the
    checkpoint's config; a continued stream (no reference in the call) skips it."""
    from model.weights import load_zipmap, save_checkpoint

    torch.manual_seed(0)
    plain = ZipMap(get_config("tiny_ref_view")).eval()
    with_match = ZipMap(get_config("tiny_ref_view", camera_ref_match=True)).eval()
    own = with_match.state_dict()
    with_match.load_state_dict({**own, **plain.state_dict()})
    x = torch.rand(1, 3, 3, 56, 56)
    with torch.no_grad():
        a, b = plain(x), with_match(x)
    torch.testing.assert_close(a["pose_enc"], b["pose_enc"])
    torch.nn.init.normal_(with_match.camera_ref_match.mlp.fc2.weight)
    with torch.no_grad():
        moved = with_match(x)["pose_enc"]
        stream = with_match(x[:, 1:], state=with_match(x[:, :1])["state"])["pose_enc"]
        stream_plain = plain(x[:, 1:], state=plain(x[:, :1])["state"])["pose_enc"]
    assert not torch.allclose(moved, a["pose_enc"])
    torch.testing.assert_close(stream, stream_plain)
    url = save_checkpoint(with_match, str(tmp_path / "m.safetensors"))
    loaded = load_zipmap(url).eval()
    assert loaded.cfg.camera_ref_match and loaded.camera_ref_match is not None
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["pose_enc"], moved)
