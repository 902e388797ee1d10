import math

import numpy as np
import pytest
import torch

from mflib import propagation as sp


def test_closed_forms_match_quadrature():
    q = torch.tensor([0.1, 1.0, 3.0], dtype=torch.float64)
    relu = sp.gauss_expect(lambda u: torch.relu(u) ** 2, q)
    assert torch.allclose(relu, q / 2, rtol=1e-10)
    erf = sp.gauss_expect(lambda u: torch.erf(u) ** 2, q)
    assert torch.allclose(sp.variance_map(q, activation="erf", weight_var=1.0), erf, rtol=1e-8)
    assert torch.allclose(sp.variance_map(q, activation="relu", weight_var=3.0, bias_var=0.5),
                          1.5 * q + 0.5)
    assert torch.allclose(sp.chi(q, activation="tanh", weight_var=1.0),
                          sp.gauss_expect(lambda u: (1 - torch.tanh(u) ** 2) ** 2, q))


def test_relu_recursion_geometric():
    for c in (1.0, 2.0, 4.0):
        q = sp.variance_recursion(c, 20, weight_var=c)
        assert torch.allclose(q, c * (c / 2) ** torch.arange(20, dtype=torch.float64))
        g = sp.gradient_recursion(q, weight_var=c)
        assert torch.allclose(g, (c / 2) ** torch.arange(20, 0, -1, dtype=torch.float64))


def test_tanh_fixed_point():
    q = sp.variance_recursion(1.0, 200, activation="tanh", weight_var=1.5, bias_var=0.05)
    assert abs(float(q[-1] - sp.variance_map(q[-1], activation="tanh", weight_var=1.5,
                                             bias_var=0.05))) < 1e-8


def test_measurement_matches_mean_field():
    for c in (1.0, 2.0, 4.0):
        P = sp.measure_propagation(20, 256, weight_var=c, n_nets=6, seed=3)
        r = P.forward.mean(0) / P.predicted_forward
        rb = P.backward.mean(0) / P.predicted_backward
        assert 0.7 < float(r.min()) and float(r.max()) < 1.4
        assert 0.6 < float(rb.min()) and float(rb.max()) < 1.6
        slope = np.polyfit(np.arange(20), np.log(P.forward.mean(0).numpy()), 1)[0]
        assert abs(slope - math.log(c / 2)) < 0.05


def test_bad_inputs():
    with pytest.raises(ValueError, match="depth"):
        sp.measure_propagation(0, 10)
    with pytest.raises(ValueError, match="weight_var"):
        sp.variance_map(1.0, weight_var=-1)
    with pytest.raises(ValueError, match="q"):
        sp.variance_map(-1.0)
    with pytest.raises(TypeError, match="f"):
        sp.gauss_expect(3, 1.0)
    with pytest.raises(ValueError, match="activation"):
        sp.chi(1.0, activation="nope")
    with pytest.raises(TypeError, match="width"):
        sp.measure_propagation(3, 2.5)
