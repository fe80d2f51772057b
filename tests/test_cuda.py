"""CPU and CUDA give the same results (skipped without a GPU; run on a GPU machine when lent)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from negmerge_cli.arithmetic.methods import REGISTRY
from negmerge_cli.stages import StreamOptions, apply_vector, merge_vectors

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_merge_on_cuda_matches_cpu(vectors, tmp_path, method):
    results = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.safetensors"
        merge_vectors(vectors, out, method, options=StreamOptions(device=device))
        results[device] = load_file(str(out))
    for name, expected in results["cpu"].items():
        if method in ("negmerge", "magmax", "dare"):  # selections and exact sums in the same order
            assert torch.equal(results["cuda"][name], expected), name
        else:
            torch.testing.assert_close(results["cuda"][name], expected, rtol=1e-6, atol=1e-6)


def test_apply_on_cuda_matches_cpu(model_files, tmp_path):
    base, finetuned = model_files
    vector = tmp_path / "tau.safetensors"
    merge_vectors(finetuned, vector, "mean", base=base, options=StreamOptions(device="cpu"))
    outputs = {}
    for device in ("cpu", "cuda"):
        outputs[device] = tmp_path / f"theta-{device}.safetensors"
        apply_vector(base, vector, -0.8, outputs[device], StreamOptions(device=device))
    cpu, cuda = load_file(str(outputs["cpu"])), load_file(str(outputs["cuda"]))
    assert all(torch.equal(cpu[n], cuda[n]) for n in cpu)


def test_clip_features_on_cuda_are_float32_by_default():
    """The released code evaluates in float32; bf16 autocast only on request (--precision bf16)."""
    from negmerge_cli.clip import models
    from negmerge_cli.training.precision import autocast

    model = models.create_model("negmerge-tiny", device="cuda")
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cpu = models.create_model("negmerge-tiny").encode_image(images)
        with autocast("fp32", "cuda"):
            fp32 = model.encode_image(images.cuda()).cpu()
        with autocast("bf16", "cuda"):
            bf16 = model.encode_image(images.cuda()).float().cpu()
    torch.testing.assert_close(fp32, cpu, rtol=2e-3, atol=2e-3)  # cuDNN may use TF32 for the patch conv
    assert (bf16 - cpu).abs().max() > (fp32 - cpu).abs().max()


CLASSIFIER = ["--model", "resnet8-cifar", "--data", "digits", "--quiet"]


def test_classifier_finetune_and_eval_on_cuda(tmp_path):
    """The classifier family end to end on the GPU: a few SGD steps from scratch, then the unlearning
    metrics on CUDA agree with CPU's (TF32 convolutions may flip a near-tie: a point at most)."""
    import json

    from negmerge_cli.classifier.data import open_classifier_data
    from negmerge_cli.classifier.split import make_forget_split
    from helpers import run_cli

    trained = run_cli("finetune", *CLASSIFIER, "--steps", "80", "--lr", "0.05", "--device", "cuda",
                      "-o", tmp_path / "original")
    assert trained.returncode == 0, trained.stderr
    (checkpoint,) = [p for p in (tmp_path / "original").glob("*.safetensors") if p.name != "base.safetensors"]
    assert all(torch.isfinite(t).all() for t in load_file(str(checkpoint)).values() if t.is_floating_point())
    split = tmp_path / "forget.json"
    make_forget_split(open_classifier_data("digits"), classes=[3]).save(split)
    metrics = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.json"
        result = run_cli("eval", *CLASSIFIER, "--num-classes", "10", "-c", checkpoint, "--forget-split", split,
                         "--device", device, "--json", out)
        assert result.returncode == 0, result.stderr
        metrics[device] = json.loads(out.read_text())["metrics"]
    assert metrics["cuda"]["dr_acc"] > 0.5  # 80 steps on digits learn something
    for name, value in metrics["cpu"].items():
        assert metrics["cuda"][name] == pytest.approx(value, abs=0.01), name
