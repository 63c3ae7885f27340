"""AuxCon: Eq. 5 (distillation loss), Eq. 6–7 (ψ, Ψ) on hand-computed tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cosme_ros.anomaly.consensus import distillation_loss, psi, psi_layer


def _t(values, shape):
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def test_distillation_loss_by_hand():
    # c2: one image, C=2, 1×2 map: ‖f − g‖²_F = 1+4+9+16 = 30 over s = H·W = 2 → 15
    # o:  one image, C=1, 2×2 map of ones against zeros: 4 over s = 4 → 1
    teacher = {"c2": _t([1, 2, 3, 4], (1, 2, 1, 2)), "o": torch.ones(1, 1, 2, 2)}
    student = {"c2": torch.zeros(1, 2, 1, 2), "o": torch.zeros(1, 1, 2, 2)}
    loss = distillation_loss(teacher, student, layers=("c2", "o"))
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(16.0)
    # per-layer MSE variant: 30/4 + 4/4
    assert distillation_loss(
        teacher, student, ("c2", "o"), normalize="chw"
    ).item() == pytest.approx(8.5)


def test_distillation_loss_averages_the_batch_and_ignores_other_layers():
    f = _t([1, 2, 3, 4], (1, 2, 1, 2))
    teacher = {"c2": torch.cat([f, f]), "c5": torch.randn(2, 3, 1, 1)}
    student = {"c2": torch.cat([torch.zeros_like(f), f]), "c5": torch.randn(2, 3, 1, 1)}
    # image 1 contributes 15, image 2 contributes 0 → mean 7.5
    assert distillation_loss(teacher, student, ("c2",)).item() == pytest.approx(7.5)


def test_distillation_loss_detaches_the_teacher():
    f = _t([1, 2, 3, 4], (1, 2, 1, 2)).requires_grad_()
    g = torch.zeros(1, 2, 1, 2, requires_grad=True)
    distillation_loss({"c2": f}, {"c2": g}, ("c2",)).backward()
    assert f.grad is None
    # d/dg (1/s)‖f − g‖² = −2(f − g)/s, s = 2
    torch.testing.assert_close(g.grad, -(f.detach()))


def test_distillation_loss_default_layers_and_errors():
    shapes = {
        "c2": (1, 2, 4, 4),
        "c3": (1, 3, 2, 2),
        "c4": (1, 4, 1, 1),
        "c5": (1, 5, 1, 1),
        "lh": (1, 2, 4, 4),
        "o": (1, 3, 4, 4),
    }
    teacher = {k: torch.ones(s) for k, s in shapes.items()}
    student = {k: torch.zeros(s) for k, s in shapes.items()}
    # each layer contributes C (per-pixel ‖1‖² = C, averaged over pixels)
    assert distillation_loss(teacher, student).item() == pytest.approx(2 + 3 + 4 + 5 + 2 + 3)
    with pytest.raises(KeyError, match="student taps lack 'c2'"):
        distillation_loss(teacher, {"c3": student["c3"]}, ("c2",))
    with pytest.raises(ValueError, match="differ"):
        distillation_loss({"c2": torch.ones(1, 2, 4, 4)}, {"c2": torch.ones(1, 2, 2, 2)}, ("c2",))
    with pytest.raises(ValueError, match="normalize"):
        distillation_loss(teacher, student, normalize="c")


def test_psi_layer_by_hand():
    f = _t([1, 0, 0, 2], (1, 2, 1, 2))  # pixel 0: (1, 0), pixel 1: (0, 2)
    g = torch.zeros(1, 2, 1, 2)
    out = psi_layer(f, g)
    assert out.shape == (1, 1, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out, _t([0.5, 2.0], (1, 1, 2)))  # (1/C)‖f − g‖², C = 2


def test_psi_layer_fp16_large_values_match_fp32():
    torch.manual_seed(0)
    f = (torch.randn(1, 2048, 2, 3) * 300).half()
    g = (torch.randn(1, 2048, 2, 3) * 300).half()
    naive = ((f - g) ** 2).sum(1)  # what an fp16 computation would give
    assert torch.isinf(naive).any()
    out = psi_layer(f, g)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    ref = ((f.float() - g.float()) ** 2).mean(1)
    torch.testing.assert_close(out, ref)
    # bf16 too
    torch.testing.assert_close(
        psi_layer(f.bfloat16(), g.bfloat16()),
        ((f.bfloat16().float() - g.bfloat16().float()) ** 2).mean(1),
    )


def test_psi_layer_keeps_gradients_for_float_inputs():
    g = torch.zeros(1, 2, 1, 1, requires_grad=True)
    psi_layer(torch.ones(1, 2, 1, 1), g).sum().backward()
    torch.testing.assert_close(g.grad, torch.full((1, 2, 1, 1), -1.0))  # d/dg (1/2)Σ(1−g)²


def test_psi_product_over_layers_upsampled():
    # c4: 2×2 map, ψ = (1/C)Σ(diff²) with C = 1 → the squared diffs themselves
    f4 = _t([1, 2, 3, 4], (1, 1, 2, 2))
    # c5: 1×1 map with C = 2: ψ = (3² + 1²)/2 = 5
    f5 = _t([3, 1], (1, 2, 1, 1))
    teacher = {"c4": f4, "c5": f5}
    student = {"c4": torch.zeros_like(f4), "c5": torch.zeros_like(f5)}
    out = psi(teacher, student, layers=("c4", "c5"))
    assert out.shape == (1, 2, 2)
    torch.testing.assert_close(out, 5.0 * _t([1, 4, 9, 16], (1, 2, 2)))


def test_psi_default_layer_and_size():
    torch.manual_seed(1)
    f = torch.randn(2, 4, 2, 3)
    g = torch.randn(2, 4, 2, 3)
    teacher, student = {"c5": f, "o": torch.randn(2, 3, 8, 12)}, {"c5": g}
    ref = ((f - g) ** 2).mean(1)
    torch.testing.assert_close(psi(teacher, student), ref)  # Le = {C5}, native size
    up = psi(teacher, student, size=(4, 6))
    torch.testing.assert_close(
        up, F.interpolate(ref[:, None], size=(4, 6), mode="bilinear", align_corners=False)[:, 0]
    )
    with pytest.raises(ValueError):
        psi(teacher, student, layers=())
