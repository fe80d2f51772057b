"""The linearized image encoder against obviously correct computations, on the tiny OpenCLIP model
in float64: central finite differences of the plain encoder, exact linearity in theta - theta0, the
plain model at theta0, the gradient equal to the vjp at theta0 whatever theta is, the expansion
point untouched by training, and the one-pass features f0 - lambda * u equal to the linearized
encoder at theta0 - lambda * tau for every lambda."""

from __future__ import annotations

import pytest
import torch

from negmerge_cli.clip.linearize import LinearizedEncoder, features_and_direction, math_attention

TINY = "negmerge-tiny"


@pytest.fixture(scope="module")
def encoder():
    from negmerge_cli.clip import models

    torch.manual_seed(0)
    return models.create_model(TINY).visual.double().eval()


def _images(encoder, n: int = 3, seed: int = 1) -> torch.Tensor:
    size = encoder.image_size if isinstance(encoder.image_size, tuple) else (encoder.image_size,) * 2
    return torch.randn(n, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _direction(encoder, scale: float, seed: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: scale * torch.randn(p.shape, dtype=p.dtype, generator=generator)
            for name, p in encoder.named_parameters()}


def _at(encoder, theta0, delta, factor: float = 1.0):
    """A LinearizedEncoder around ``theta0`` whose theta is theta0 + factor * delta."""
    import copy

    moved = copy.deepcopy(encoder)
    with torch.no_grad():
        for name, p in moved.named_parameters():
            p.copy_(theta0[name] + factor * delta[name])
    return LinearizedEncoder(moved, theta0)


def _plain(encoder, params, images):
    from torch.func import functional_call

    with torch.no_grad(), math_attention():
        return functional_call(encoder, params, (images,))


def test_the_linear_term_matches_central_finite_differences(encoder):
    theta0 = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    delta, images, eps = _direction(encoder, 1e-2), _images(encoder), 1e-5
    plus = _plain(encoder, {n: theta0[n] + eps * delta[n] for n in theta0}, images)
    minus = _plain(encoder, {n: theta0[n] - eps * delta[n] for n in theta0}, images)
    finite_difference = (plus - minus) / (2 * eps)
    with torch.no_grad():
        linear_term = _at(encoder, theta0, delta)(images) - _plain(encoder, theta0, images)
    assert torch.allclose(linear_term, finite_difference, rtol=1e-6, atol=1e-9)
    assert linear_term.abs().max() > 1e-4  # a real change, not two zeros


def test_exactly_linear_in_theta_minus_theta0_and_plain_at_theta0(encoder):
    theta0 = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    delta, images = _direction(encoder, 0.05), _images(encoder)
    with torch.no_grad():
        at_zero = _at(encoder, theta0, delta, 0.0)(images)
        one, three = _at(encoder, theta0, delta, 1.0)(images), _at(encoder, theta0, delta, -3.0)(images)
    assert torch.equal(at_zero, _plain(encoder, theta0, images))  # lambda = 0 is the plain model, exactly
    assert torch.allclose(three - at_zero, -3.0 * (one - at_zero), rtol=1e-10, atol=1e-12)
    # a large step stays on the tangent plane, where the plain model has moved off it
    plain_far = _plain(encoder, {n: theta0[n] + 1.0 * delta[n] for n in theta0}, images)
    assert not torch.allclose(plain_far, one, atol=1e-6)


def test_gradient_is_the_vjp_at_theta0_whatever_theta_is(encoder):
    theta0 = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    images = _images(encoder)
    cotangent = torch.randn(3, encoder.output_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    linearized = _at(encoder, theta0, _direction(encoder, 0.1), 1.0)
    (linearized(images) * cotangent).sum().backward()
    at_theta0 = {n: p.detach().clone().requires_grad_(True) for n, p in encoder.named_parameters()}
    from torch.func import functional_call

    with math_attention():
        (functional_call(encoder, at_theta0, (images,)) * cotangent).sum().backward()
    for name, p in linearized.encoder.named_parameters():
        assert torch.allclose(p.grad, at_theta0[name].grad, rtol=1e-9, atol=1e-12), name


def test_training_moves_theta_only(encoder):
    theta0 = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    linearized = _at(encoder, theta0, _direction(encoder, 0.0), 1.0).train()
    optimizer = torch.optim.AdamW(linearized.encoder.parameters(), lr=1e-3)
    assert not any(p.requires_grad for p in linearized.expansion.parameters())
    assert not linearized.expansion.training and linearized.encoder.training
    loss = linearized(_images(encoder)).pow(2).mean()
    loss.backward()
    optimizer.step()
    moved = {n: p.detach() for n, p in linearized.encoder.named_parameters()}
    assert any(not torch.equal(moved[n], theta0[n]) for n in theta0)
    assert all(torch.equal(p, theta0[n]) for n, p in linearized.expansion.named_parameters())


def test_one_pass_features_equal_the_linearized_encoder_at_every_lambda(encoder):
    theta0 = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    tau, images = _direction(encoder, 0.02, seed=5), _images(encoder, 4)
    base, direction = features_and_direction(encoder, tau, images)
    for coef in (0.0, 0.25, 1.0, 2.5):
        with torch.no_grad():
            expected = _at(encoder, theta0, tau, -coef)(images)
        assert torch.allclose(base - coef * direction, expected, rtol=1e-10, atol=1e-12), coef


def test_math_attention_restores_the_fast_path():
    before = torch.backends.mha.get_fastpath_enabled()
    with math_attention():
        assert torch.backends.mha.get_fastpath_enabled() is False
    assert torch.backends.mha.get_fastpath_enabled() == before
