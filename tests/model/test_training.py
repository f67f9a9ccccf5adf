"""Training: the losses are right on known cases, and a short run lowers the loss and resumes."""

import csv

import torch

from model.geometry import quat_to_mat
from model.training.loop import SyntheticStream, TrainConfig, _echoed, lr_at, train
from model.training.losses import normalize_scene


def test_normalize_scene_puts_the_first_camera_at_the_origin_with_unit_scale():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, 4, generator=g)
    R = quat_to_mat(q / q.norm(dim=-1, keepdim=True))
    cams = torch.cat([R, torch.randn(1, 3, 3, 1, generator=g) * 5], dim=-1)
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 6], [0, 0, 1]]).expand(1, 3, 3, 3)
    depth = torch.rand(1, 3, 12, 16, generator=g) * 10 + 1
    rel, d, local = normalize_scene(cams, depth, K)
    torch.testing.assert_close(rel[0, 0], torch.eye(4)[:3], atol=1e-5, rtol=0)
    # scaling the whole world changes nothing after normalisation
    big = torch.cat([cams[..., :3], cams[..., 3:] * 7], dim=-1)
    rel2, d2, local2 = normalize_scene(big, depth * 7, K)
    torch.testing.assert_close(rel2, rel, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(d2, d, atol=1e-5, rtol=1e-4)
    # the mean distance of the points to the first camera is 1 after normalisation
    first_pts = local[0, 0].reshape(-1, 3)
    assert 0.2 < first_pts.norm(dim=-1).mean() < 5


def test_learning_rate_schedule():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == 1e-4 and lr_at(9, cfg) == 1e-3
    assert abs(lr_at(100, cfg) - 1e-4) < 1e-12 and lr_at(50, cfg) < lr_at(20, cfg)
    # with a time limit the schedule follows the budget that is further along
    timed = TrainConfig(steps=1000, warmup=10, lr=1e-3, min_lr_ratio=0.1, time_limit_s=60)
    assert lr_at(20, timed, elapsed_s=0.0) == lr_at(20, TrainConfig(**{**timed.__dict__, "time_limit_s": 0}))
    assert abs(lr_at(20, timed, elapsed_s=60.0) - 1e-4) < 1e-12
    assert abs(lr_at(20, timed, elapsed_s=30.0) - 0.55e-3) < 1e-12
    assert lr_at(5, timed, elapsed_s=59.0) == lr_at(5, cfg)  # warm-up counts steps


def test_batched_stream_stacks_collections_of_one_size():
    cfg = TrainConfig(min_frames=2, max_frames=5, sizes=("14x28", "28x42"), seed=3)
    one = next(iter(SyntheticStream(cfg, 7)))
    three = next(iter(SyntheticStream(TrainConfig(**{**cfg.__dict__, "batch": 3}), 7)))
    assert three["images"].shape[0] == 3 and three["images"].shape[1:] == one["images"].shape[1:]
    assert one["images"].shape[0] == 1 and one["depth"].shape[0] == 1
    # the first collection of a step is the one a batch of one draws; the others are other scenes
    torch.testing.assert_close(three["images"][0], one["images"][0], atol=0, rtol=0)
    assert not torch.equal(three["images"][1], three["images"][0])
    assert not torch.equal(three["cam_from_world"][2], three["cam_from_world"][1])


def test_time_limit_stops_the_run_and_keeps_its_steps(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "run"), preset="tiny_ref_view", steps=100000, warmup=1, min_frames=2,
                      max_frames=2, height=28, width=42, log_every=1, checkpoint_every=1000, snapshot_every=1000,
                      workers=0, batch=2, time_limit_s=3.0)
    messages = []
    train(cfg, log=messages.append)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert 0 < state["step"] < 100000
    assert (tmp_path / "run" / f"weights-{state['step']:06d}.safetensors").exists()
    assert any("time limit" in m for m in messages)
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert float(rows[-1]["lr"]) < 3e-4  # the schedule decayed with the clock


def test_short_run_lowers_the_loss_and_resumes(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "run"), preset="tiny_ref_view", steps=40, lr=2e-3, warmup=5,
                      min_frames=3, max_frames=3, height=28, width=42, log_every=5, checkpoint_every=20,
                      snapshot_every=40, workers=0, overfit=True)
    train(cfg, log=lambda *_: None)
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    losses = [float(r["loss"]) for r in rows]
    assert len(rows) == 8 and losses[-1] < 0.7 * losses[0], losses
    assert (tmp_path / "run" / "weights-000040.safetensors").exists()
    # a second call with more steps continues from step 40
    train(TrainConfig(**{**cfg.__dict__, "steps": 50}), log=lambda *_: None)
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [int(r["step"]) for r in rows][-2:] == [45, 50]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] == 50


def test_run_initialised_from_weights_trains_those_weights(tmp_path):
    """--init-from: the optimizer must step the loaded parameters (loading assigns new tensors)."""
    from safetensors.numpy import load_file

    base = TrainConfig(out=str(tmp_path / "a"), preset="tiny_ref_view", steps=2, warmup=1, min_frames=2, max_frames=2,
                       height=28, width=42, log_every=1, checkpoint_every=2, snapshot_every=2, workers=0)
    train(base, log=lambda *_: None)
    start = str(tmp_path / "a" / "weights-000002.safetensors")
    train(TrainConfig(**{**base.__dict__, "out": str(tmp_path / "b"), "init_from": start}), log=lambda *_: None)
    before, after = load_file(start), load_file(str(tmp_path / "b" / "weights-000002.safetensors"))
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert len(changed) > len(before) // 2, f"only {len(changed)} of {len(before)} tensors changed"


def test_reference_match_added_to_trained_weights_trains(tmp_path):
    """--ref-match --init-from weights without the module: the loaded weights and the new module train."""
    from safetensors.numpy import load_file

    base = TrainConfig(out=str(tmp_path / "a"), preset="tiny_ref_view", steps=2, warmup=1, min_frames=2, max_frames=3,
                       height=28, width=42, log_every=1, checkpoint_every=2, snapshot_every=2, workers=0)
    train(base, log=lambda *_: None)
    start = str(tmp_path / "a" / "weights-000002.safetensors")
    train(TrainConfig(**{**base.__dict__, "out": str(tmp_path / "b"), "init_from": start, "ref_match": True,
                         "camera_weight": 5.0}), log=lambda *_: None)
    before, after = load_file(start), load_file(str(tmp_path / "b" / "weights-000002.safetensors"))
    new = [k for k in after if k not in before]
    assert new and all(k.startswith("camera_ref_match.") for k in new)
    assert (after["camera_ref_match.mlp.fc2.weight"] != 0).any()  # zero at the start, trained since
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert len(changed) > len(before) // 2


def test_echo_repeats_each_batch_with_its_frames_reordered():
    cfg = TrainConfig(min_frames=6, max_frames=6, height=14, width=28, echo=3, seed=1)
    rendered = list(zip(range(2), SyntheticStream(cfg, 0)))
    steps = list(_echoed((b for _, b in rendered), cfg, 0))
    assert len(steps) == 6
    for g in range(2):
        first, *repeats = steps[3 * g: 3 * g + 3]
        assert first is rendered[g][1]
        for rep in repeats:
            # the same frames, in another order, every array reordered alike
            assert not torch.equal(rep["images"], first["images"])
            order = [int((first["images"][0] == f).flatten(1).all(1).nonzero()[0]) for f in rep["images"][0]]
            assert sorted(order) == list(range(6))
            for key in ("depth", "cam_from_world", "intrinsics"):
                torch.testing.assert_close(rep[key], first[key][:, order], atol=0, rtol=0)


def test_echoed_run_counts_every_repeat_as_a_step(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "run"), preset="tiny_ref_view", steps=6, warmup=1, min_frames=3, max_frames=3,
                      height=28, width=42, log_every=1, checkpoint_every=6, snapshot_every=6, workers=0, echo=3)
    train(cfg, log=lambda *_: None)
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 6


def test_training_orbits_turn_at_most_the_configured_step():
    import numpy as np

    def max_turn(cap):
        cfg = TrainConfig(min_frames=3, max_frames=3, height=14, width=28, path_kinds=("orbit",), seed=2,
                          orbit_max_step_deg=cap)
        R = next(iter(SyntheticStream(cfg, 0)))["cam_from_world"][0, :, :3, :3].double().numpy()
        return max(np.degrees(np.arccos(np.clip((np.trace(R[i + 1] @ R[i].T) - 1) / 2, -1, 1))) for i in range(2))

    assert max_turn(5.0) <= 5.0 + 1e-6
    assert max_turn(0.0) > 25.0  # 0 = no cap: 3 frames over a 60-270 degree arc


def test_match_targets_identity_for_a_repeated_frame_and_loss_rewards_the_right_match():
    from model.synthetic import generate_sample
    from model.training.losses import match_loss, match_targets

    s = generate_sample(5, "street", 2, 56, 84)
    b = {k: torch.from_numpy(v)[None] for k, v in s.items()}
    twice = {k: torch.cat([v[:, :1], v[:, :1]], dim=1) for k, v in b.items()}  # frame 1 = frame 0
    target, valid = match_targets(twice["cam_from_world"], twice["depth"], twice["intrinsics"], 14)
    n = 4 * 6
    assert target.shape == (1, 2, n) and valid[0, 1].float().mean() > 0.5
    assert torch.equal(target[0, 1][valid[0, 1]], torch.arange(n)[valid[0, 1]])
    # a different camera: targets are real patch indices, not all the identity
    target, valid = match_targets(b["cam_from_world"], b["depth"], b["intrinsics"], 14)
    assert valid[0, 1].any() and target.min() >= 0 and target.max() < n
    right = torch.full((1, 2, n, n), -10.0)
    right[0, 1, torch.arange(n), target[0, 1]] = 10.0
    flat = torch.zeros(1, 2, n, n)
    batch = {**b, "images": b["images"].float()}
    assert match_loss(right, batch) < 1e-3 < match_loss(flat, batch)
    assert abs(match_loss(flat, batch).item() - torch.log(torch.tensor(float(n))).item()) < 1e-5


def test_reference_match_model_trains_its_matches():
    from model.config import get_config
    from model.synthetic import generate_sample
    from model.training.losses import total_loss
    from model.zipmap import ZipMap

    torch.manual_seed(0)
    model = ZipMap(get_config("tiny_ref_view", camera_ref_match=True))
    s = generate_sample(5, "street", 3, 56, 84)
    b = {k: torch.from_numpy(v)[None].float() for k, v in s.items()}
    out = model(b["images"], window=0)
    assert out["ref_match_logits"].shape == (1, 3, 24, 24)
    loss, terms = total_loss(out, b)
    assert "match" in terms and terms["match"] > 0
    loss.backward()
    assert model.camera_ref_match.proj.weight.grad.abs().sum() > 0
    assert model.camera_ref_match.log_temperature.grad is not None


def test_time_limit_on_a_checkpoint_step_still_leaves_a_snapshot(tmp_path):
    """Stopping right after a step that saved last.pt (but no snapshot) must still write the weights."""
    cfg = TrainConfig(out=str(tmp_path / "run"), preset="tiny_ref_view", steps=100000, warmup=1, min_frames=2,
                      max_frames=2, height=28, width=42, log_every=1, checkpoint_every=1, snapshot_every=1000,
                      workers=0, time_limit_s=2.0)
    messages = []
    train(cfg, log=messages.append)
    step = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"]
    assert 0 < step < 1000
    assert (tmp_path / "run" / f"weights-{step:06d}.safetensors").exists()
    assert any("time limit" in m for m in messages)
