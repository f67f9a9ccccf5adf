"""The TTT layer: closed-form update directions, Newton-Schulz, schedules and the module."""

import torch

from model.ttt import (
    FastWeightSwiGLU,
    TTTOp,
    inverse_softplus,
    newton_schulz,
    swiglu_apply,
    swiglu_update_directions,
    ttt_schedule,
)

torch.manual_seed(0)


def _random_problem(b=2, l=7, d=5, dh=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    w0, w2 = (torch.randn(b, d, dh, generator=g, dtype=dtype) for _ in range(2))
    w1 = torch.randn(b, dh, d, generator=g, dtype=dtype)
    k, v = (torch.randn(b, l, d, generator=g, dtype=dtype) for _ in range(2))
    lrs = [torch.rand(b, l, 1, generator=g, dtype=dtype) + 0.1 for _ in range(3)]
    return (w0, w1, w2), k, v, lrs


def test_closed_form_directions_match_autograd():
    (w0, w1, w2), k, v, lrs = _random_problem()
    ours = swiglu_update_directions(w0, w1, w2, k, v, *lrs)
    for i in range(3):
        ws = [w.clone().requires_grad_(True) for w in (w0, w1, w2)]
        objective = (lrs[i] * (v * swiglu_apply(*ws, k)).sum(-1, keepdim=True)).sum()
        (grad,) = torch.autograd.grad(objective, ws[i])
        # the direction is the descent direction of L = -objective, i.e. +d(objective)/dw
        torch.testing.assert_close(ours[i], grad, rtol=1e-10, atol=1e-12)


def test_newton_schulz_orthogonalises_both_orientations():
    g = torch.Generator().manual_seed(2)
    for shape in [(3, 16, 40), (3, 40, 16)]:
        G = torch.randn(*shape, generator=g, dtype=torch.float64)
        X = newton_schulz(G, steps=5, dtype=None)
        assert X.shape == G.shape and X.dtype == torch.float64
        s = torch.linalg.svdvals(X)
        # the quintic iteration lands singular values in a band around 1, not exactly at 1
        assert s.min() > 0.5 and s.max() < 1.3, s
        U, _, Vh = torch.linalg.svd(G, full_matrices=False)
        polar = U @ Vh
        cos = (X * polar).sum((-2, -1)) / (X.norm(dim=(-2, -1)) * polar.norm(dim=(-2, -1)))
        assert (cos > 0.95).all(), cos


def test_newton_schulz_dtype_setting():
    G = torch.randn(2, 8, 12, dtype=torch.float32)
    assert newton_schulz(G, 5).dtype == torch.bfloat16  # the published numerics
    assert newton_schulz(G, 5, dtype=None).dtype == torch.float32
    lo = newton_schulz(G, 5).float()
    hi = newton_schulz(G, 5, dtype=None)
    assert (lo - hi).norm() / hi.norm() < 0.1  # bf16 rounding, amplified by the iteration


def test_schedule_offline_equals_single_window_and_windows_differ():
    (w0, w1, w2), k, v, lrs = _random_problem(l=8)
    q = k.flip(1)
    offline, w_off = ttt_schedule((w0, w1, w2), q, k, v, lrs, [TTTOp(0, -1, True, False), TTTOp(0, -1, False, True)],
                                  ns_dtype=None)
    one_window, w_win = ttt_schedule((w0, w1, w2), q, k, v, lrs,
                                     [TTTOp(0, 8, True, False), TTTOp(0, 8, False, True)], ns_dtype=None)
    torch.testing.assert_close(offline, one_window)
    two, _ = ttt_schedule((w0, w1, w2), q, k, v, lrs,
                          [TTTOp(0, 4, True, False), TTTOp(0, 4, False, True),
                           TTTOp(4, 8, True, False), TTTOp(4, 8, False, True)], ns_dtype=None)
    assert two.shape == offline.shape
    assert not torch.allclose(two, offline)  # causal windows see less than the bidirectional pass


def test_update_keeps_column_norms_and_apply_only_keeps_weights():
    (w0, w1, w2), k, v, lrs = _random_problem()
    _, (n0, n1, n2) = ttt_schedule((w0, w1, w2), k, k, v, lrs, [TTTOp(0, -1, True, False)], ns_dtype=None)
    for before, after in ((w0, n0), (w1, n1), (w2, n2)):
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after.norm(dim=1), before.norm(dim=1), rtol=1e-4, atol=0)
    out, same = ttt_schedule((w0, w1, w2), k, k, v, lrs, [TTTOp(0, -1, False, True)], ns_dtype=None)
    torch.testing.assert_close(out, swiglu_apply(w0, w1, w2, k))
    assert all(a is b for a, b in zip(same, (w0, w1, w2)))


def test_module_multihead_shapes_and_state():
    layer = FastWeightSwiGLU(dim=16, head_dim=8, inter_multi=2, ns_dtype="input").double()
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    out, (w0, w1, w2) = layer(x, [TTTOp(0, -1, True, False), TTTOp(0, -1, False, True)])
    assert out.shape == x.shape
    assert w0.shape == (4, 8, 16) and w1.shape == (4, 16, 8) and w2.shape == (4, 8, 16)
    # batch items are independent: running item 1 alone gives the same output
    alone, _ = layer(x[1:], [TTTOp(0, -1, True, False), TTTOp(0, -1, False, True)])
    torch.testing.assert_close(out[1:], alone)


def test_module_rejects_schedules_that_skip_tokens():
    layer = FastWeightSwiGLU(dim=8, head_dim=8)
    x = torch.randn(1, 6, 8)
    try:
        layer(x, [TTTOp(0, 3, True, True)])
    except ValueError as exc:
        assert "cover" in str(exc)
    else:
        raise AssertionError("a schedule applying to half the tokens must be rejected")


def test_learning_rate_offset():
    x = torch.tensor(inverse_softplus(0.01), dtype=torch.float64)
    assert abs(torch.nn.functional.softplus(x).item() - 0.01) < 1e-12


def test_cpu_bfloat16_emulation_tracks_true_bfloat16():
    G = torch.randn(3, 64, 128, generator=torch.Generator().manual_seed(4))
    emulated = newton_schulz(G, 5).float()  # CPU: float32 arithmetic rounded to bf16
    true_bf16 = newton_schulz(G.bfloat16(), 5, dtype=None)  # real bf16 GEMMs
    assert emulated.dtype == torch.float32 and true_bf16.dtype == torch.bfloat16
    exact = newton_schulz(G.double(), 5, dtype=None)
    err_emul = (emulated.double() - exact).norm() / exact.norm()
    err_true = (true_bf16.double() - exact).norm() / exact.norm()
    # both carry bf16-level error of the same size, and agree with each other to that level
    assert 1e-4 < err_emul < 5e-2 and 1e-4 < err_true < 5e-2
    assert (emulated.double() - true_bf16.double()).norm() / exact.norm() < 5e-2


def test_module_under_bf16_autocast_keeps_one_dtype():
    """The output norm gets its weight in the activations' dtype (else PyTorch warns and leaves the fused kernel)."""
    import warnings

    layer = FastWeightSwiGLU(dim=16, head_dim=8, inter_multi=2)
    x = torch.randn(1, 10, 16)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*Mismatch dtype")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = layer(x, [TTTOp(0, -1, True, False), TTTOp(0, -1, False, True)])
    assert out.shape == x.shape and torch.isfinite(out.float()).all()
    ref, _ = layer(x, [TTTOp(0, -1, True, False), TTTOp(0, -1, False, True)])  # float32 outside autocast
    assert ref.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.1)  # bf16 rounding only
