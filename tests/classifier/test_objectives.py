"""The published unlearning objectives and the milestone schedule (classifier/objectives.py), each
run through the library's training loop on a tiny float64 MLP and compared with a dense computation
written here: the forward pass by hand, autograd for the gradient, SGD with momentum 0.9 and weight
decay step by step. Plus the CLI's refusals of bad settings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_clean_failure
from torch import nn
from torch.utils.data import TensorDataset

from negmerge_cli.classifier.objectives import relabel, saliency_mask
from negmerge_cli.classifier.train import ClassifierSettings, learning_rate, train_classifier

torch.set_num_threads(1)  # tiny models: two OpenMP threads on a shared 2-core machine spin-wait for each other

C = 3  # classes
LR, WD, MOMENTUM = 0.1, 0.01, 0.9


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, C)).double()  # tanh: no tied zero gradients


def _params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _logits(params, x):
    w1, b1, w2, b2 = params
    return torch.tanh(x @ w1.T + b1) @ w2.T + b2


def _grads(params, x, y, sign: float = 1.0, l1: float = 0.0):
    leaves = [p.clone().requires_grad_() for p in params]
    loss = sign * F.cross_entropy(_logits(leaves, x), y) + l1 * sum(p.abs().sum() for p in leaves)
    return torch.autograd.grad(loss, leaves)


def _sgd(params, grads, buffers, lr=LR):
    """torch.optim.SGD (momentum 0.9, no dampening, weight decay added to the gradient), one step."""
    new_params, new_buffers = [], []
    for p, g, b in zip(params, grads, buffers):
        d = g + WD * p
        b = d if b is None else MOMENTUM * b + d
        new_params.append(p - lr * b)
        new_buffers.append(b)
    return new_params, new_buffers


@pytest.fixture(scope="module")
def data():
    """Df: 3 examples of one image (so the random labels' order in a shuffled batch cannot matter),
    labels 0, 1, 2; Dr: 4 other examples. Indices 0-2 are Df, 3-6 Dr."""
    g = torch.Generator().manual_seed(5)
    x = torch.cat([torch.randn(1, 4, generator=g, dtype=torch.float64).repeat(3, 1),
                   torch.randn(4, 4, generator=g, dtype=torch.float64)])
    y = torch.tensor([0, 1, 2, 2, 0, 1, 1])
    return TensorDataset(x, y), x, y


FORGET, RETAIN = [0, 1, 2], [3, 4, 5, 6]


def _settings(objective: str, **extra) -> ClassifierSettings:
    values = dict(lr=LR, wd=WD, label_smoothing=0.0, seed=7, epochs=1, steps=None, batch_size=8, objective=objective,
                  schedule="step", milestones=(91, 136))  # a constant rate, as in the protocol's short unlearning
    return ClassifierSettings(**{**values, **extra})


def _random_labels(settings) -> torch.Tensor:
    """The first draw of the loop's label generator (seeded with seed + 1): Df's one batch."""
    return torch.randint(0, C, (3,), generator=torch.Generator().manual_seed(settings.seed + 1))


def _assert_params(model, expected):
    for got, want in zip(model.parameters(), expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-10, atol=1e-12)


def test_random_labels_is_a_df_step_with_uniform_labels_then_a_dr_step(data):
    dataset, x, y = data
    model, settings = _model(), _settings("random-labels")
    p0 = _params(model)
    train_classifier(model, dataset, RETAIN, settings, "cpu", forget_indices=FORGET)
    p1, buffers = _sgd(p0, _grads(p0, x[FORGET], _random_labels(settings)), [None] * 4)
    p2, _ = _sgd(p1, _grads(p1, x[RETAIN], y[RETAIN]), buffers)
    _assert_params(model, p2)


def test_random_labels_cover_every_class_and_wrong_labels_never_the_true_one():
    labels = torch.zeros(3000, dtype=torch.long)
    drawn = relabel(labels, "random", C, torch.Generator().manual_seed(0))
    shares = torch.bincount(drawn, minlength=C).double() / len(drawn)
    assert torch.all((shares - 1 / C).abs() < 0.05), shares  # the true class 0 included, uniformly
    wrong = relabel(labels, "wrong", C, torch.Generator().manual_seed(0))
    assert (wrong != 0).all() and set(wrong.tolist()) == {1, 2}


def _dense_mask(params, x, y, fraction, batches):
    total = [torch.zeros_like(p) for p in params]
    for rows in batches:  # the gradient of -CE (batch mean), summed over Df's batches
        total = [t + g for t, g in zip(total, _grads(params, x[rows], y[rows], sign=-1.0))]
    magnitudes = torch.cat([t.abs().flatten() for t in total])
    keep = int(magnitudes.numel() * fraction)
    threshold = magnitudes.sort(descending=True).values[keep - 1]  # the whole model ranked at once
    return [(t.abs() >= threshold).double() for t in total]


def test_saliency_mask_is_the_global_top_fraction_of_the_summed_forget_gradient():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.tensor([0, 2, 1, 1, 0])
    model = _model(1)
    mask = saliency_mask(model, TensorDataset(x, y), [0, 1, 2, 3, 4], 0.3, 2, "cpu")
    expected = _dense_mask(_params(model), x, y, 0.3, [[0, 1], [2, 3], [4]])
    assert [mask[name].tolist() for name, _ in model.named_parameters()] == [m.tolist() for m in expected]
    assert sum(int(m.sum()) for m in mask.values()) == int(43 * 0.3)  # 43 weights in the MLP


@pytest.mark.parametrize("freeze", [False, True])
def test_salun_masks_the_gradients_of_both_passes(data, freeze):
    """Published: only the gradient is masked, so weight decay and momentum still move the weights
    outside the mask; with --saliency-freeze they stay at their start values."""
    dataset, x, y = data
    model = _model()
    settings = _settings("salun", saliency_fraction=0.5, saliency_freeze=freeze)
    p0 = _params(model)
    train_classifier(model, dataset, RETAIN, settings, "cpu", forget_indices=FORGET)
    mask = _dense_mask(p0, x, y, 0.5, [FORGET])
    masked = [g * m for g, m in zip(_grads(p0, x[FORGET], _random_labels(settings)), mask)]
    p1, buffers = _sgd(p0, masked, [None] * 4)
    if freeze:
        p1 = [torch.where(m.bool(), p, start) for p, m, start in zip(p1, mask, p0)]
        buffers = [b * m for b, m in zip(buffers, mask)]
    p2, _ = _sgd(p1, [g * m for g, m in zip(_grads(p1, x[RETAIN], y[RETAIN]), mask)], buffers)
    if freeze:
        p2 = [torch.where(m.bool(), p, start) for p, m, start in zip(p2, mask, p0)]
    _assert_params(model, p2)
    outside = torch.cat([(p.detach() - s)[m == 0] for p, s, m in zip(model.parameters(), p0, mask)])
    assert (outside.abs().max() == 0) == freeze


def test_l1_sparse_adds_a_linearly_decaying_l1_penalty(data):
    dataset, x, y = data
    model, settings = _model(), _settings("l1-sparse", epochs=2, l1_alpha=0.02)
    p0 = _params(model)
    train_classifier(model, dataset, RETAIN, settings, "cpu")
    p1, buffers = _sgd(p0, _grads(p0, x[RETAIN], y[RETAIN], l1=0.02), [None] * 4)  # epoch 0 of 2: alpha
    p2, _ = _sgd(p1, _grads(p1, x[RETAIN], y[RETAIN], l1=0.01), buffers)  # epoch 1: alpha * (1 - 1/2)
    _assert_params(model, p2)


def test_milestones_are_multisteplr_stepped_per_epoch(data):
    settings = _settings("ce", schedule="step", milestones=(2, 4), epochs=6)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[2, 4], gamma=0.1)
    expected = []
    for _ in range(6):  # 6 epochs of 3 steps, the scheduler stepped after each epoch
        expected += [optimizer.param_groups[0]["lr"]] * 3
        optimizer.step()
        scheduler.step()
    assert [learning_rate(s, 18, settings, steps_per_epoch=3) for s in range(18)] == pytest.approx(expected)
    # through the loop: one Dr batch per epoch, milestone 1, so epoch 1 trains at lr / 10
    dataset, x, y = data
    model = _model()
    p0 = _params(model)
    train_classifier(model, dataset, RETAIN, _settings("ce", schedule="step", milestones=(1,), epochs=2), "cpu")
    p1, buffers = _sgd(p0, _grads(p0, x[RETAIN], y[RETAIN]), [None] * 4)
    p2, _ = _sgd(p1, _grads(p1, x[RETAIN], y[RETAIN]), buffers, lr=LR * 0.1)
    _assert_params(model, p2)


@pytest.fixture(scope="module")
def split_file(tmp_path_factory):
    from negmerge_cli.classifier.data import open_classifier_data
    from negmerge_cli.classifier.split import make_forget_split

    path = tmp_path_factory.mktemp("split") / "forget.json"
    make_forget_split(open_classifier_data("digits"), fraction=0.1, seed=0).save(path)
    return path


FAST = ["--model", "resnet8-cifar", "--data", "digits", "--batch-size", "64", "--workers", "0", "--steps", "1"]


@pytest.mark.parametrize("extra, fragments", [
    (["--schedule", "step", "--milestones", "136,91"], ["--milestones 136,91", "increasing"]),
    (["--schedule", "step", "--milestones", "0"], ["--milestones 0"]),
    (["--milestones", "91,136"], ["--milestones needs --schedule step"]),
    (["--objective", "salun", "--saliency-fraction", "1.5", "SPLIT"], ["--saliency-fraction 1.5", "(0, 1]"]),
    (["--objective", "salun"], ["--objective salun", "needs --forget-split"]),
    (["--objective", "random-labels", "--subset", "forget", "SPLIT"], ["--objective random-labels", "--subset"]),
    (["--l1-alpha", "0.1"], ["--l1-alpha is for --objective l1-sparse"]),
    (["--objective", "l1-sparse", "--l1-alpha", "-1"], ["--l1-alpha -1"]),
    (["--saliency-freeze"], ["--saliency-freeze is for --objective salun"]),
])
def test_bad_objective_settings_are_refused(cli, tmp_path, split_file, extra, fragments):
    extra = [a for e in extra for a in (["--forget-split", split_file] if e == "SPLIT" else [e])]
    target = tmp_path / "sweep"
    assert_clean_failure(cli("finetune", *FAST, *extra, "-o", target), *fragments)
    assert not target.exists()


def test_a_clip_model_refuses_the_classifier_objective_settings(tmp_path):
    from dataclasses import replace

    from negmerge_cli.core.errors import UsageError
    from negmerge_cli.training.family import refuse_foreign_options
    from negmerge_cli.training.options import FinetuneOptions

    options = FinetuneOptions(model="negmerge-tiny", data="digits", output=tmp_path / "sweep")
    refuse_foreign_options(options, "clip", "negmerge-tiny")  # the defaults pass
    for name, value in (("milestones", (3,)), ("saliency_fraction", 0.3), ("saliency_freeze", True),
                        ("l1_alpha", 0.1)):
        with pytest.raises(UsageError, match=f"{name} is for classifier models"):
            refuse_foreign_options(replace(options, **{name: value}), "clip", "negmerge-tiny")


def test_salun_through_the_cli_records_its_settings(cli, tmp_path, split_file):
    """The plumbing: the split's Df and Dr reach the loop, and the objective's settings are in the
    checkpoint's metadata and the sweep's identity (a resume with others is refused)."""
    import json

    from negmerge_cli.checkpoint.opening import open_checkpoint

    target = tmp_path / "salun"
    common = [*FAST, "--objective", "salun", "--forget-split", split_file, "--schedule", "step", "--quiet"]
    result = cli("finetune", *common, "--milestones", "91,136", "--saliency-fraction", "0.25", "-o", target)
    assert result.returncode == 0, result.stderr
    (trained,) = [p for p in target.glob("*.safetensors") if p.name != "base.safetensors"]
    with open_checkpoint(trained) as checkpoint:
        meta = checkpoint.metadata
    assert (meta["negmerge.objective"], meta["negmerge.saliency_fraction"], meta["negmerge.milestones"]) == (
        "salun", "0.25", "[91, 136]")
    identity = json.loads((target / "sweep.json").read_text())["identity"]
    assert (identity["saliency_fraction"], identity["saliency_freeze"], identity["milestones"]) == (0.25, False, [91, 136])
    other = cli("finetune", *common, "--milestones", "91,136", "-o", target)  # fraction 0.5 now
    assert other.returncode != 0 and "saliency_fraction" in other.stderr, other.stderr


@pytest.mark.parametrize("objective, extra", [
    ("l1-sparse", ["--subset", "retain", "--l1-alpha", "1e-3"]),
    ("random-labels", []),
    ("wrong-labels", ["--subset", "forget"]),
])
def test_each_objective_trains_through_the_cli(cli, tmp_path, split_file, objective, extra):
    """One real step of each remaining objective through the command, its name and settings recorded."""
    from negmerge_cli.checkpoint.opening import open_checkpoint

    target = tmp_path / objective
    result = cli("finetune", *FAST, "--objective", objective, "--forget-split", split_file, *extra, "-q", "-o", target)
    assert result.returncode == 0, result.stderr
    (trained,) = [p for p in target.glob("*.safetensors") if p.name != "base.safetensors"]
    with open_checkpoint(trained) as checkpoint:
        meta = checkpoint.metadata
    assert meta["negmerge.objective"] == objective
    assert meta.get("negmerge.l1_alpha") == ("0.001" if objective == "l1-sparse" else None)
