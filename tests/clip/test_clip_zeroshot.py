"""Zero-shot heads, metrics, the image cache, in-memory negation and the training schedule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from clip_helpers import TINY, make_image_folder

from negmerge_cli.arithmetic.negation import NegatedModel
from negmerge_cli.clip import datasets, models, train, zeroshot
from negmerge_cli.clip.evaluate import ImageCache, classification_metrics, image_features
from negmerge_cli.core.errors import CheckpointError, UsageError

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny():
    return models.create_model(TINY), models.tokenizer_for(TINY)


def test_head_matches_a_direct_computation(tiny):
    model, tokenizer = tiny
    classnames, templates = ["cat", "dog", "car"], ["a photo of a {}.", "a drawing of the {}!", "{}"]
    head = zeroshot.build_head(model, tokenizer, classnames, templates)
    with torch.no_grad():
        expected = []
        for name in classnames:
            rows = [model.encode_text(tokenizer([t.replace("{}", name)]))[0] for t in templates]
            mean = torch.stack([r / r.norm() for r in rows]).mean(0)
            expected.append(mean / mean.norm() * model.logit_scale.exp())
    torch.testing.assert_close(head, torch.stack(expected), rtol=1e-5, atol=1e-5)
    image = torch.randn(2, head.shape[1])
    torch.testing.assert_close(zeroshot.logits(image, head), F.normalize(image, dim=-1) @ head.t())


def test_random_init_is_seeded_so_every_job_builds_the_same_base():
    first, second = models.create_model(TINY).state_dict(), models.create_model(TINY).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_unknown_model_and_misfit_checkpoint(tmp_path, tiny):
    with pytest.raises(UsageError, match="unknown model 'no-such-model'"):
        models.create_model("no-such-model")
    from safetensors.torch import save_file

    state = models.state_dict_for_saving(tiny[0])
    state["visual.proj"] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="does not fit model negmerge-tiny: tensor 'visual.proj'"):
        models.create_model(TINY, str(tmp_path / "bad.safetensors"))


def test_metrics_on_hand_made_logits():
    logits = torch.tensor([[9.0, 1, 2, 3, 4, 5, 6], [0, 9, 1, 1, 1, 1, 1], [1, 2, 3, 4, 5, 6, 9], [9, 8, 7, 6, 5, 4, 0]])
    labels = torch.tensor([0, 1, 4, 6])
    metrics = classification_metrics(logits, labels)
    assert metrics.acc1 == pytest.approx(0.5)
    assert metrics.acc5 == pytest.approx(0.75)  # sample 2: label 4 ranks 2nd; sample 3: label 6 is last
    # per class: 0 -> 1/1, 1 -> 1/1, 4 -> 0/1, 6 -> 0/1
    assert metrics.mean_per_class_recall == pytest.approx(0.5)


def test_cache_gives_the_eval_transform_exactly_within_or_past_the_budget(tmp_path, tiny):
    model = tiny[0]
    data = datasets.load_dataset(str(make_image_folder(tmp_path / "shapes", per_class=4)), "test")
    transform = models.transforms_for(model, train=False)
    direct = torch.stack([transform(data[i][0]) for i in range(len(data))])
    full = ImageCache.build(data, transform, budget_bytes=1 << 30)
    partial = ImageCache.build(data, transform, budget_bytes=5 * 3 * 32 * 32)
    assert (full.num_cached, partial.num_cached) == (12, 5)
    for cache in (full, partial):
        torch.testing.assert_close(torch.cat(list(cache.batches(5))), direct, rtol=0, atol=1e-6)
    torch.testing.assert_close(image_features(model, partial, 4), model.encode_image(direct).detach(),
                               rtol=1e-4, atol=1e-5)


def test_negation_in_place_and_text_tower_detection(tiny):
    model = models.create_model(TINY)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    tau = {k: torch.randn_like(v) if k.startswith("visual.") else torch.zeros_like(v)
           for k, v in base.items() if v.is_floating_point()}
    negated = NegatedModel(model, tau, "tau.safetensors", TINY)
    assert not negated.touches_text
    negated.set(0.7)
    key = "visual.proj"
    torch.testing.assert_close(model.state_dict()[key], base[key] - 0.7 * tau[key])
    negated.set(0.0)
    assert torch.equal(model.state_dict()[key], base[key])
    tau["text_projection"] = torch.ones_like(tau["text_projection"])
    assert NegatedModel(model, tau, "tau.safetensors", TINY).touches_text
    with pytest.raises(CheckpointError, match="'nope' is not in model"):
        NegatedModel(model, {"nope": torch.zeros(2)}, "tau.safetensors", TINY)


def test_schedule_is_task_vectors_cosine_with_warmup():
    lrs = [train.cosine_lr(s, 1e-5, 10, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-6) and lrs[9] == pytest.approx(1e-5)
    assert lrs[10] == pytest.approx(1e-5) and lrs[55] == pytest.approx(5e-6)
    assert lrs[-1] < 1e-8
    assert train.effective_warmup(500, 20000) == 500 and train.effective_warmup(500, 40) == 10
    settings = train.TrainSettings(lr=1e-5, wd=0.1, label_smoothing=0, seed=0, steps=1, batch_size=128, accum_steps=2)
    assert train.micro_batch_size(settings, 2) == 32
    with pytest.raises(UsageError, match="divisible"):
        train.micro_batch_size(settings, 3)
