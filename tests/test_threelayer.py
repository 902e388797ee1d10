import math

import pytest
import torch

import mflib
from mflib import threelayer as tl


def _data(m=24, d=3, seed=0, symmetric=False):
    g = torch.Generator().manual_seed(seed)
    x, y, teacher = tl.teacher_data(m, d, generator=g, symmetric=symmetric)
    return tl.with_bias(x), y, teacher


def _net(n1=5, n2=7, d=4, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return tl.iid_embedding(d, (11, 13), generator=g).sample(n1, n2, batch=batch, generator=g)


def test_forward_matches_direct_loop():
    x, _, _ = _data(m=6)
    s = _net()
    p = s.params
    out = tl.output(p, x)
    n1, n2 = p.widths
    for b in range(2):
        for m in range(x.shape[0]):
            h3 = 0.0
            for j2 in range(n2):
                h2 = sum(p.w2[b, j1, j2] * math.tanh(float(p.w1[b, j1] @ x[m])) for j1 in range(n1)) / n1
                h3 += p.w3[b, j2] * math.tanh(h2)
            assert abs(float(out[b, m]) - float(h3 / n2)) < 1e-12


def test_closed_form_gradients_equal_width_rescaled_autograd():
    x, y, _ = _data()
    for phi in [("tanh", "tanh", "identity"), ("sigmoid", "tanh", "tanh")]:
        p = _net(n1=9, n2=4).params
        for a, b in zip(tl.gradients(p, x, y, phi=phi), tl.autograd_gradients(p, x, y, phi=phi)):
            assert a.shape == b.shape
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)


def test_two_layer_gradients_equal_rescaled_autograd():
    x, y, _ = _data()
    p = tl.two_layer_init(6, 4, batch=3, generator=torch.Generator().manual_seed(0))
    w, a = p.w.clone().requires_grad_(True), p.a.clone().requires_grad_(True)
    lo = (0.5 * (tl.two_layer_output(tl.TwoLayerParams(w, a), x) - y) ** 2).mean(1).sum()
    gw, ga = torch.autograd.grad(lo, (w, a))
    cw, ca = tl.two_layer_gradients(p, x, y)
    assert torch.allclose(cw, 6 * gw, atol=1e-13) and torch.allclose(ca, 6 * ga, atol=1e-13)


def test_first_step_update_of_output_is_width_independent():
    x, y, _ = _data(m=32)
    g = torch.Generator().manual_seed(3)
    emb = tl.iid_embedding(4, 2048, generator=g)
    moves = {}
    for n in (64, 1024):
        p = emb.sample(n, n, batch=4 if n == 64 else 1, generator=g).params
        run = tl.train(p, x, y, lr=0.1, steps=1)
        moves[n] = float((tl.output(run.params, x) - tl.output(p, x)).abs().mean())
    ratio = moves[64] / moves[1024]
    assert 0.6 < ratio < 1.6, moves
    # an O(1) move: unscaled autograd steps would shrink it by a factor ~n
    assert moves[1024] > 2e-4


def test_embedding_sampling_and_coupling():
    g = torch.Generator().manual_seed(0)
    emb = tl.iid_embedding(4, (10, 12), generator=g)
    s = emb.sample(6, 5, batch=3, generator=g)
    b, j1, j2 = 2, 4, 3
    c1, c2 = int(s.c1[b, j1]), int(s.c2[b, j2])
    assert torch.equal(s.params.w1[b, j1], emb.w1[c1])
    assert s.params.w2[b, j1, j2] == emb.w2[c1, c2] and s.params.w3[b, j2] == emb.w3[c2]
    assert int(s.c1.max()) < 10 and int(s.c2.max()) < 12
    # same seed, same networks; distance to the ensemble is zero at t = 0
    s2 = emb.sample(6, 5, batch=3, generator=torch.Generator().manual_seed(5))
    s3 = emb.sample(6, 5, batch=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(s2.c1, s3.c1) and torch.equal(s2.params.w2, s3.params.w2)
    rms, sup = tl.distance(s.params, emb.ensemble(), s.c1, s.c2)
    assert float(rms.abs().max()) == 0 and float(sup.abs().max()) == 0
    # uniform sampling: index frequencies match 1/N
    big = emb.sample(20000, 1, generator=g)
    freq = torch.bincount(big.c1[0], minlength=10).double() / 20000
    assert float((freq - 0.1).abs().max()) < 0.015


def test_network_holding_every_index_once_follows_the_ensemble():
    # a sample that is a permutation of the table is the MF limit itself
    x, y, _ = _data()
    emb = tl.iid_embedding(4, 8, generator=torch.Generator().manual_seed(2))
    perm1, perm2 = torch.randperm(8)[None], torch.randperm(8)[None]
    p = tl.Params(emb.w1[perm1], emb.w2[perm1[:, :, None], perm2[:, None, :]], emb.w3[perm2])
    a = tl.train(p, x, y, lr=0.5, steps=20).params
    ref = tl.train(emb.ensemble(), x, y, lr=0.5, steps=20).params
    rms, _ = tl.distance(a, ref, perm1, perm2)
    assert float(rms) < 1e-12


def test_coupled_training_distance_shrinks_with_width():
    x, y, _ = _data(m=32)
    emb = tl.iid_embedding(4, 64, generator=torch.Generator().manual_seed(0))
    r = tl.coupled_training(emb, x, y, widths=[8, 128], seeds=6, lr=1.0, steps=10, record_every=5,
                            generator=torch.Generator().manual_seed(1))
    assert r.times.tolist() == [0.0, 5.0, 10.0]
    assert r.rms[8].shape == (6, 3) and r.out[8].shape == (6, 3, 32)
    small, large = float(r.rms[8].amax(1).mean()), float(r.rms[128].amax(1).mean())
    assert large < 0.6 * small  # sqrt(8/128) = 0.25 expected
    assert float(r.ref_loss[-1]) < float(r.ref_loss[0])


def test_coupled_training_correlated_embedding_limit_risk_decreases():
    # Moved from the page (claim l06-cor-ratio): full-batch small-step GD on the
    # limit of a correlated embedding decreases the risk, by construction.
    x, y, _ = _data(m=32)
    emb = tl.correlated_embedding(4, 64, generator=torch.Generator().manual_seed(0))
    r = tl.coupled_training(emb, x, y, widths=[8], seeds=2, lr=1.0, steps=20, record_every=5,
                            generator=torch.Generator().manual_seed(1))
    assert float(r.ref_loss[-1]) < float(r.ref_loss[0])
    assert bool((r.ref_loss[1:] <= r.ref_loss[:-1] + 1e-12).all())


def test_training_decreases_loss_and_minibatches_are_reproducible():
    x, y, _ = _data(m=40)
    p = _net(n1=16, n2=16, batch=1).params
    run = tl.train(p, x, y, lr=1.0, steps=40, record_every=10)
    assert run.loss.shape == (1, 5) and run.times.tolist() == [0, 10, 20, 30, 40]
    assert float(run.loss[0, -1]) < 0.5 * float(run.loss[0, 0])
    a = tl.train(p, x, y, lr=0.5, steps=5, batch_size=4, generator=torch.Generator().manual_seed(0))
    b = tl.train(p, x, y, lr=0.5, steps=5, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.params.w2, b.params.w2)
    snap = tl.train(p, x, y, lr=1.0, steps=40, snapshots=(0, 20))
    assert sorted(snap.snapshots) == [0, 20] and torch.equal(snap.snapshots[0].w2, p.w2)
    assert torch.equal(tl.train(p, x, y, lr=1.0, steps=20).params.w2, snap.snapshots[20].w2)
    frozen = tl.train(p, x, y, lr=0.5, steps=3, xi=(0.0, 0.0, 1.0))
    assert torch.equal(frozen.params.w1, p.w1) and not torch.equal(frozen.params.w3, p.w3)


def test_h2_concentrates_under_iid_but_not_correlated_init():
    x, _, _ = _data(m=20)
    sp = {}
    for n1 in (64, 4096):
        e = tl.iid_embedding(4, (n1, 32), generator=torch.Generator().manual_seed(n1))
        c = tl.correlated_embedding(4, (n1, 32), generator=torch.Generator().manual_seed(n1))
        sp[n1] = (float(tl.h2_spread(e.ensemble(), x)), float(tl.h2_spread(c.ensemble(), x)))
    assert 4 < sp[64][0] / sp[4096][0] < 16        # sqrt(64) = 8
    assert 0.7 < sp[64][1] / sp[4096][1] < 1.4      # O(1), no concentration


def test_lstsq_fit_error_and_features():
    g = torch.Generator().manual_seed(0)
    x = tl.with_bias(2 * torch.rand(600, 2, generator=g, dtype=torch.float64) - 1)
    w = 2 * torch.randn(200, 3, generator=g, dtype=torch.float64)
    f = tl.first_layer_features(w, x)
    target = torch.cos(2 * x[:, 0]) + x[:, 1] ** 2
    err = tl.lstsq_fit_error(f[:400], target[:400], f[400:], target[400:])
    assert err < 0.02
    # odd features (no bias coordinate) cannot fit an even function
    fo = tl.first_layer_features(w[:, :2], x[:, :2])
    assert tl.lstsq_fit_error(fo[:400], x[:400, 0] ** 2, fo[400:], x[400:, 0] ** 2) > 0.2


def test_divergence_is_reported_not_nan():
    x, y, _ = _data()
    p = _net(n1=8, n2=8, batch=1).params
    big = tl.Params(p.w1 * 30, p.w2 * 1e3, p.w3 * 1e3)
    with pytest.raises(mflib.Diverged):
        tl.train(big, x, y * 1e3, lr=1e3, steps=200)
    run = tl.train(big, x, y * 1e3, lr=1e3, steps=200, on_diverge="flag")
    assert run.diverged and torch.isfinite(run.loss).all()
    assert all(torch.isfinite(t).all() for t in (run.params.w1, run.params.w2, run.params.w3))
    emb = tl.Embedding(big.w1[0], big.w2[0], big.w3[0])
    with pytest.raises(mflib.Diverged):
        tl.coupled_training(emb, x, y * 1e3, widths=[4], seeds=1, lr=1e3, steps=200)
    with pytest.raises(mflib.Diverged):
        tl.train_two_layer(tl.TwoLayerParams(p.w1 * 30, p.w3 * 1e4), x, y * 1e4, lr=1e4, steps=200)


def test_bad_inputs_raise_with_the_argument_name():
    x, y, _ = _data()
    p = _net().params
    with pytest.raises(TypeError, match="params"):
        tl.output("w", x)
    with pytest.raises(ValueError, match="x must have 4 columns"):
        tl.output(p, x[:, :3])
    with pytest.raises(TypeError, match="x"):
        tl.output(p, x.numpy())
    with pytest.raises(ValueError, match="x and y"):
        tl.gradients(p, x, y[:-1])
    with pytest.raises(ValueError, match="lr"):
        tl.train(p, x, y, lr=-1.0, steps=3)
    with pytest.raises(TypeError, match="steps"):
        tl.train(p, x, y, lr=1.0, steps=2.5)
    with pytest.raises(ValueError, match="phi"):
        tl.output(p, x, phi=("relu", "tanh", "identity"))
    with pytest.raises(ValueError, match="xi"):
        tl.train(p, x, y, lr=1.0, steps=1, xi=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="n1"):
        tl.iid_embedding(4, 5).sample(0, 3)
    with pytest.raises(ValueError, match="w2 must have shape"):
        tl.Embedding(torch.zeros(3, 2), torch.zeros(3, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="x contains non-finite"):
        tl.output(p, x * float("nan"))
    with pytest.raises(ValueError, match="on_diverge"):
        tl.train(p, x, y, lr=1.0, steps=1, on_diverge="ignore")
    with pytest.raises(ValueError, match="widths"):
        tl.coupled_training(tl.iid_embedding(4, 5), x, y, widths=[], lr=1.0, steps=1)
    with pytest.raises(ValueError, match="m must be even"):
        tl.teacher_data(5, symmetric=True)
    with pytest.raises(ValueError, match="ridge"):
        tl.lstsq_fit_error(x, y, x, y, ridge=-1.0)


def test_float32_and_device_follow_inputs():
    x, y, _ = _data()
    emb = tl.iid_embedding(4, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    s = emb.sample(8, 8, batch=2, generator=torch.Generator().manual_seed(1))
    run = tl.train(s.params, x.float(), y.float(), lr=0.5, steps=3)
    assert run.params.w2.dtype == torch.float32 and run.params.w2.device == x.device


@pytest.mark.gpu
def test_cuda_matches_cpu():
    x, y, _ = _data()
    s = _net()
    cpu = tl.train(s.params, x, y, lr=0.5, steps=5).params
    dev = torch.device("cuda")
    pc = tl.Params(s.params.w1.to(dev), s.params.w2.to(dev), s.params.w3.to(dev))
    gpu = tl.train(pc, x.to(dev), y.to(dev), lr=0.5, steps=5).params
    assert torch.allclose(gpu.w2.cpu(), cpu.w2, atol=1e-10)


def test_distance_buffers_and_finite_check():
    """The in-place distance of coupled_training equals the formula, buffers reused or not."""
    emb = tl.iid_embedding(4, (9, 11), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    s = emb.sample(5, 6, batch=3, generator=torch.Generator().manual_seed(4))
    p = s.params.clone()
    p.w2.add_(0.01 * torch.randn(p.w2.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    ref = emb.ensemble()
    e1 = (p.w1 - ref.w1[0][s.c1]).norm(dim=2)
    e2 = (p.w2 - ref.w2[0][s.c1[:, :, None], s.c2[:, None, :]]).abs()
    e3 = (p.w3 - ref.w3[0][s.c2]).abs()
    rms = torch.stack([e.pow(2).flatten(1).mean(1).sqrt() for e in (e1, e2, e3)]).amax(0)
    sup = torch.stack([e.flatten(1).amax(1) for e in (e1, e2, e3)]).amax(0)
    work = {}
    for _ in range(2):
        got = tl._distance(p, ref, s.c1, s.c2, work)
        assert torch.equal(got[0], rms) and torch.equal(got[1], sup)
    assert torch.equal(tl.distance(p, ref, s.c1, s.c2)[0], rms)
    assert tl._finite(p)
    for bad in (float("nan"), float("inf"), -float("inf")):
        q = p.clone()
        q.w2[1, 2, 3] = bad
        assert not tl._finite(q)


def test_stack_ensembles_and_pairwise_gaps():
    g = torch.Generator().manual_seed(3)
    embs = [tl.iid_embedding(3, 8, generator=g) for _ in range(3)]
    p = tl.stack_ensembles(embs)
    assert p.w1.shape == (3, 8, 3) and p.w2.shape == (3, 8, 8) and p.w3.shape == (3, 8)
    torch.testing.assert_close(p.w2[1], embs[1].w2)
    x = torch.rand(10, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(tl.output(p, x)[2], tl.output(embs[2].ensemble(), x)[0])
    with pytest.raises(ValueError, match="embeddings"):
        tl.stack_ensembles([embs[0], tl.iid_embedding(3, 9, generator=g)])
    with pytest.raises(TypeError, match="embeddings"):
        tl.stack_ensembles([embs[0], 3])
    gaps = tl.pairwise_sup_gap(torch.tensor([[0.0, 1.0], [0.0, 3.0], [1.0, 1.0]]))
    torch.testing.assert_close(gaps, torch.tensor([2.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="curves"):
        tl.pairwise_sup_gap(torch.zeros(1, 4))


def test_w2_speed_esssup_and_rank_one_fraction():
    g = torch.Generator().manual_seed(5)
    p = tl.iid_embedding(3, 6, generator=g).ensemble()
    x = torch.rand(7, 3, generator=g, dtype=torch.float64)
    y = torch.rand(7, generator=g, dtype=torch.float64)
    g2 = tl.gradients(p, x, y)[1][0]
    torch.testing.assert_close(tl.w2_speed_esssup(p, x, y), g2.abs().mean(1).max()[None])
    assert float(tl.w2_speed_esssup(p, x, y, xi2=0.0)) == 0.0
    u, v = torch.rand(5, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    assert math.isclose(tl.rank_one_fraction(torch.outer(u, v)), 1.0, rel_tol=1e-12)
    assert math.isclose(tl.rank_one_fraction(torch.eye(4, dtype=torch.float64)), 0.25, rel_tol=1e-12)
    with pytest.raises(ValueError, match="m"):
        tl.rank_one_fraction(torch.zeros(3, 3))


def test_sgd_noise_distance_vanishes_for_full_batches_and_grows_with_step():
    g = torch.Generator().manual_seed(6)
    p = tl.iid_embedding(3, 8, generator=g).ensemble()
    x = torch.rand(16, 3, generator=g, dtype=torch.float64)
    y = torch.rand(16, generator=g, dtype=torch.float64)
    d = [tl.sgd_noise_distance(p, x, y, lr=lr, time=2.0, batch_size=2,
                               generator=torch.Generator().manual_seed(1)) for lr in (0.05, 0.5)]
    assert 0 < d[0] < d[1]
    with pytest.raises(TypeError, match="generator"):
        tl.sgd_noise_distance(p, x, y, lr=0.1, time=1.0, batch_size=2, generator=None)


def test_w3_stays_within_the_bound_of_its_equation():
    # Moved from Lecture 6 (claim l06-w3-sup): |d/dt w3| <= E|y_hat - y| <= (2 L)^(1/2) since
    # |tanh| <= 1, so |w3(T)| <= max|w3(0)| + T sup_t (2 L(t))^(1/2) (triangle inequality of the update).
    x, y, _ = _data(m=32)
    emb = tl.iid_embedding(4, 32, generator=torch.Generator().manual_seed(3))
    p = emb.ensemble()
    run = tl.train(p, x, y, lr=0.5, steps=40, record_every=1)
    bound = float(p.w3.abs().max()) + 0.5 * 40 * math.sqrt(2 * float(run.loss.max()))
    assert float(run.params.w3.abs().max()) <= bound


def test_first_layer_features_have_full_rank():
    # Moved from Lecture 6 (claim l06-rank-f1): tanh ridge features of Gaussian weights on
    # bias-augmented inputs are linearly independent almost surely: rank min(N, M).
    x, _, _ = _data(m=20)
    g = torch.Generator().manual_seed(5)
    for n in (10, 40):
        w1 = torch.randn(n, x.shape[1], generator=g, dtype=x.dtype)
        assert int(torch.linalg.matrix_rank(tl.first_layer_features(w1, x))) == min(n, 20)
