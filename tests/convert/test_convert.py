"""negmerge convert: research checkpoints made the way that code makes them, converted and compared
numerically with the modules that wrote them; hostile and damaged pickles refused without running."""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from clip_helpers import TINY
from helpers import assert_clean_failure
from safetensors import safe_open
from safetensors.torch import load_file

# The research code's package layout: `src/modeling.py` with ImageEncoder (the OpenCLIP model in
# `self.model`, text transformer deleted, preprocessing kept as attributes) and the release's split
# attention (four nn.Linear named Q, K, V, O replacing each visual nn.MultiheadAttention).
MODELING = '''
import torch
import torch.nn.functional as F
from torch import nn


def _linear(weight, bias):
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


class CustomMultiheadAttention(nn.Module):
    def __init__(self, attention):
        super().__init__()
        self.num_heads = attention.num_heads
        self.head_dim = attention.head_dim
        weights = attention.in_proj_weight.detach().chunk(3)
        biases = attention.in_proj_bias.detach().chunk(3)
        self.Q, self.K, self.V = (_linear(w, b) for w, b in zip(weights, biases))
        self.O = _linear(attention.out_proj.weight.detach(), attention.out_proj.bias.detach())

    def forward(self, q, k, v, need_weights=False, attn_mask=None):
        batch, length, width = q.shape  # open_clip runs its transformer batch-first

        def heads(x):
            return x.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.Q(q)), heads(self.K(k)), heads(self.V(v)), attn_mask=attn_mask)
        return self.O(out.transpose(1, 2).reshape(batch, length, width)), None


class ImageEncoder(nn.Module):
    def __init__(self, model, train_preprocess, val_preprocess, split):
        super().__init__()
        self.model = model
        self.train_preprocess = train_preprocess
        self.val_preprocess = val_preprocess
        self.cache_dir = None
        if split:
            for block in self.model.visual.transformer.resblocks:
                block.attn = CustomMultiheadAttention(block.attn)
        delattr(self.model, "transformer")

    def forward(self, images):
        return self.model.encode_image(images)
'''


@pytest.fixture(scope="module")
def modeling(tmp_path_factory):
    """``src.modeling`` importable from a temporary folder, so pickles name ``src.modeling.ImageEncoder``."""
    root = tmp_path_factory.mktemp("research")
    (root / "src").mkdir()
    (root / "src" / "__init__.py").write_text("")
    (root / "src" / "modeling.py").write_text(textwrap.dedent(MODELING))
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        yield importlib.import_module("src.modeling")
    finally:
        sys.path.remove(str(root))
        for name in ("src.modeling", "src"):
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """The tiny model and its OpenCLIP checkpoint file (the starting point of every fine-tune)."""
    from negmerge_cli.clip import models

    model = models.create_model(TINY)
    path = tmp_path_factory.mktemp("pretrained") / "pretrained.safetensors"
    models.save_checkpoint(model, path, {})
    return model, path


def make_encoder(modeling, pretrained_model, split: bool, seed: int = 0):
    """An ImageEncoder as the research code builds it, then 'fine-tuned': every image-tower tensor
    moved (Q, K and V each differently), the rest left as pretrained."""
    import open_clip
    from timm.data.transforms_factory import transforms_imagenet_train

    val_preprocess = open_clip.image_transform(32, is_train=False)
    train_preprocess = transforms_imagenet_train(img_size=32, auto_augment="rand-m1-n1-mstd0.5")
    encoder = modeling.ImageEncoder(copy.deepcopy(pretrained_model), train_preprocess, val_preprocess, split)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in encoder.model.visual.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return encoder.eval()


IMAGES = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def save(encoder, path: Path, how: str) -> Path:
    if how == "module":
        torch.save(encoder, path)
    elif how == "state_dict":
        torch.save(encoder.state_dict(), path)
    else:  # the pre-1.6 format: a plain pickle stream, classes carried with their source
        torch.save(encoder, path, _use_new_zipfile_serialization=False)
    return path


def image_features(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """encode_image of a fresh tiny model carrying these visual.* tensors."""
    from negmerge_cli.clip import models

    model = models.create_model(TINY)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if k.startswith("visual.")]
    with torch.no_grad():
        return model.encode_image(IMAGES)


def metadata_of(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
@pytest.mark.parametrize("how", ["module", "state_dict", "legacy"])
def test_research_checkpoint_converts_to_the_same_image_encoder(modeling, pretrained, tmp_path, cli, how, split):
    encoder = make_encoder(modeling, pretrained[0], split)
    source = save(encoder, tmp_path / "finetuned.pt", how)
    out = tmp_path / "out.safetensors"

    result = cli("convert", source, "-o", out, "--model", TINY)

    assert result.returncode == 0, result.stderr
    converted = load_file(str(out))
    # everything the encoder kept (the text transformer was deleted), under OpenCLIP's names
    assert set(converted) == {k for k in pretrained[0].state_dict() if not k.startswith("transformer.")}
    with torch.no_grad():
        expected = encoder(IMAGES)
    torch.testing.assert_close(image_features(converted), expected, rtol=1e-5, atol=1e-5)
    metadata = metadata_of(out)
    assert (metadata["negmerge.command"], metadata["negmerge.kind"], metadata["negmerge.model"]) == (
        "convert", "checkpoint", TINY)
    assert metadata["negmerge.layout"] == ("split-qkvo" if split else "open_clip")
    assert json.loads(metadata["negmerge.source"]) == [{"file": "finetuned.pt", "sha256": sha256(source)}]


def test_split_fusion_is_exact_inverse(modeling, pretrained, tmp_path, cli):
    """Splitting the pretrained attention and fusing it back gives the very same bytes."""
    model, _ = pretrained
    encoder = modeling.ImageEncoder(copy.deepcopy(model), None, None, split=True)
    source = save(encoder, tmp_path / "zeroshot.pt", "module")
    out = tmp_path / "zeroshot.safetensors"
    assert cli("convert", source, "-o", out, "-m", TINY).returncode == 0
    converted = load_file(str(out))
    reference = {k: v for k, v in model.state_dict().items() if k in converted}
    assert set(reference) == set(converted)
    assert all(torch.equal(converted[k], reference[k]) for k in reference)


def test_pretrained_completes_a_checkpoint_open_clip_loads_strictly(modeling, pretrained, tmp_path, cli):
    import open_clip

    model, pretrained_path = pretrained
    encoder = make_encoder(modeling, model, split=True)
    source = save(encoder, tmp_path / "finetuned.pt", "module")
    out = tmp_path / "full.safetensors"

    result = cli("convert", source, "-o", out, "-m", TINY, "--pretrained", pretrained_path)

    assert result.returncode == 0, result.stderr
    loaded, _, _ = open_clip.create_model_and_transforms(TINY, pretrained=str(out))  # strict load
    tokens = torch.randint(1, 49406, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(IMAGES), encoder(IMAGES), rtol=1e-5, atol=1e-5)
        assert torch.equal(loaded.encode_text(tokens), model.encode_text(tokens))
    text_tower = [k for k in model.state_dict() if k.startswith("transformer.")]
    assert f"{len(text_tower)} from {pretrained_path}" in result.stderr
    assert json.loads(metadata_of(out)["negmerge.pretrained"]) == [
        {"file": "pretrained.safetensors", "sha256": sha256(pretrained_path)}
    ]



def test_the_reproduction_recipe_merges_converted_release_checkpoints(modeling, pretrained, tmp_path, cli):
    """docs/reproduce.md: base from zeroshot.pt, fine-tunes completed with it, merge --base."""
    model, pretrained_path = pretrained
    zeroshot = save(modeling.ImageEncoder(copy.deepcopy(model), None, None, split=True), tmp_path / "zeroshot.pt", "module")
    base = tmp_path / "base.safetensors"
    assert cli("convert", zeroshot, "-o", base, "-m", TINY, "-p", pretrained_path, "-q").returncode == 0
    converted = []
    for seed in range(3):
        source = save(make_encoder(modeling, model, split=True, seed=seed), tmp_path / f"ft{seed}.pt", "module")
        converted.append(tmp_path / f"ft{seed}.safetensors")
        assert cli("convert", source, "-o", converted[-1], "-m", TINY, "-p", base, "-q").returncode == 0

    result = cli("merge", "--base", base, "-o", tmp_path / "tau.safetensors", "-q", *converted)

    assert result.returncode == 0, result.stderr
    tau = load_file(str(tmp_path / "tau.safetensors"))
    assert all(not v.any() for k, v in tau.items() if not k.startswith("visual."))
    assert tau["visual.transformer.resblocks.0.attn.in_proj_weight"].any()

def hf_config():
    from transformers import CLIPConfig

    # negmerge-tiny: vision 32 px, patch 8, width 64, 2 layers, 2 heads; text width 32, 2 heads,
    # 2 layers, context 24; embed dim 64; exact GELU and LayerNorm eps 1e-5 as open_clip builds it.
    return CLIPConfig(
        vision_config=dict(hidden_size=64, intermediate_size=256, num_attention_heads=2, num_hidden_layers=2,
                           image_size=32, patch_size=8, hidden_act="gelu", layer_norm_eps=1e-5),
        text_config=dict(hidden_size=32, intermediate_size=128, num_attention_heads=2, num_hidden_layers=2,
                         max_position_embeddings=24, vocab_size=49408, hidden_act="gelu", layer_norm_eps=1e-5,
                         bos_token_id=49406, eos_token_id=49407),
        projection_dim=64,
    )


def randomized(model):
    """Every tensor distinct (LayerNorm weights included), so a swapped name cannot go unnoticed."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def test_hf_clip_model_folder_converts_both_towers(tmp_path, cli):
    pytest.importorskip("transformers")
    import open_clip
    from transformers import CLIPModel

    hf = randomized(CLIPModel(hf_config()))
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "from_hf.safetensors"

    result = cli("convert", tmp_path / "hf", "-o", out, "-m", TINY)

    assert result.returncode == 0, result.stderr
    loaded, _, _ = open_clip.create_model_and_transforms(TINY, pretrained=str(out))  # complete and strict
    tokens = torch.zeros(2, 24, dtype=torch.long)
    tokens[:, 0], tokens[0, 1:6], tokens[1, 1:9] = 49406, 320, 1125
    tokens[0, 6], tokens[1, 9] = 49407, 49407
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(IMAGES), _features(hf.get_image_features(pixel_values=IMAGES)),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded.encode_text(tokens), _features(hf.get_text_features(input_ids=tokens)),
                                   rtol=1e-5, atol=1e-5)
    assert metadata_of(out)["negmerge.layout"] == "hf-clip"


def _features(output):
    # transformers >= 5 returns a model output whose pooler_output is the projected embedding
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@pytest.mark.parametrize("naming", ["bare", "prefixed"])
def test_hf_vision_model_takes_its_projection_from_pretrained(pretrained, tmp_path, cli, naming):
    """transformers >= 5 saves CLIPVisionModel's keys bare (`embeddings.*`); 4.x, which wrote the
    fine-tunes on the Hub, under `vision_model.`."""
    pytest.importorskip("transformers")
    import open_clip
    from safetensors.torch import save_file
    from transformers import CLIPVisionModel

    model, pretrained_path = pretrained
    hf = randomized(CLIPVisionModel(hf_config().vision_config))
    hf.save_pretrained(tmp_path / "hf")
    source = tmp_path / "hf" / "model.safetensors"
    if naming == "prefixed" and not next(iter(load_file(str(source)))).startswith("vision_model."):
        save_file({f"vision_model.{k}": v for k, v in load_file(str(source)).items()}, str(source), {"format": "pt"})
    out = tmp_path / "vision.safetensors"

    refused = cli("convert", source, "-o", out, "-m", TINY)
    assert_clean_failure(refused, str(source), "missing tensor 'visual.proj'", "--pretrained")
    assert not out.exists()

    result = cli("convert", source, "-o", out, "-m", TINY, "-p", pretrained_path)
    assert result.returncode == 0, result.stderr
    loaded, _, _ = open_clip.create_model_and_transforms(TINY, pretrained=str(out))
    with torch.no_grad():
        expected = hf(pixel_values=IMAGES).pooler_output @ model.visual.proj
        torch.testing.assert_close(loaded.encode_image(IMAGES), expected, rtol=1e-5, atol=1e-5)
    assert json.loads(metadata_of(out)["negmerge.source"]) == [{"file": "model.safetensors", "sha256": sha256(source)}]


class RunsACommand:
    """What a hostile checkpoint looks like: unpickling it would call os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_a_command_is_refused_without_running_it(tmp_path, cli):
    marker = tmp_path / "MARKER"
    source = tmp_path / "hostile.pt"
    torch.save({"visual.proj": torch.zeros(64, 64), "payload": RunsACommand(marker)}, source)
    out = tmp_path / "out.safetensors"

    result = cli("convert", source, "-o", out, "-m", TINY)

    assert_clean_failure(result, str(source), "system", "refused")
    assert not marker.exists() and not out.exists()


def test_damaged_and_unfit_inputs_fail_cleanly_and_write_nothing(modeling, pretrained, tmp_path, cli):
    encoder = make_encoder(modeling, pretrained[0], split=False)
    good = save(encoder, tmp_path / "good.pt", "state_dict")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(4096))
    state = encoder.state_dict()
    torch.save({**state, "model.visual.bogus": torch.zeros(2)}, tmp_path / "extra.pt")
    torch.save({k: v for k, v in state.items() if k != "model.visual.ln_post.weight"}, tmp_path / "missing.pt")
    torch.save({**state, "model.visual.proj": torch.zeros(64, 32)}, tmp_path / "shape.pt")
    torch.save({"model.params.0": torch.zeros(2), "model.params0.0": torch.zeros(2), "model_name": "ViT-B-32"},
               tmp_path / "linear.pt")
    out = tmp_path / "out.safetensors"
    cases = [
        (tmp_path / "absent.pt", ["no such file"]),
        (truncated, ["not a readable PyTorch checkpoint"]),
        (noise, ["not a readable PyTorch checkpoint"]),
        (tmp_path / "extra.pt", ["unexpected tensor 'visual.bogus'", TINY]),
        (tmp_path / "missing.pt", ["missing tensor 'visual.ln_post.weight'"]),
        (tmp_path / "shape.pt", ["'visual.proj' has shape (64, 32)", "(64, 64)"]),
        (tmp_path / "linear.pt", ["linearized"]),
    ]
    for source, fragments in cases:
        assert_clean_failure(cli("convert", source, "-o", out, "-m", TINY), str(source), *fragments)
        assert not out.exists()
    assert_clean_failure(cli("convert", good, "-o", out, "-m", "no-such-model"), "no-such-model")
    assert not out.exists()


def test_refuses_to_overwrite_without_force_and_to_replace_its_source(modeling, pretrained, tmp_path, cli):
    encoder = make_encoder(modeling, pretrained[0], split=False)
    source = save(encoder, tmp_path / "finetuned.pt", "module")
    out = tmp_path / "out.safetensors"
    out.write_text("keep me")

    assert_clean_failure(cli("convert", source, "-o", out, "-m", TINY), str(out), "--force")
    assert out.read_text() == "keep me"
    assert_clean_failure(cli("convert", source, "-o", source, "-m", TINY), "also an input")
    assert cli("convert", source, "-o", out, "-m", TINY, "--force").returncode == 0
    assert "visual.proj" in load_file(str(out))


def test_a_folder_output_loads_as_an_open_clip_local_dir(modeling, pretrained, tmp_path, cli):
    """-o DIR/: open_clip's hub layout (weights, open_clip_config.json) and a model card."""
    import open_clip
    import yaml

    model, pretrained_path = pretrained
    encoder = make_encoder(modeling, model, split=True)
    source = save(encoder, tmp_path / "finetuned.pt", "module")
    out = tmp_path / "converted"

    result = cli("convert", source, "-o", f"{out}/", "-m", TINY, "--pretrained", pretrained_path)

    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "open_clip_config.json", "open_clip_model.safetensors"]
    loaded, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(IMAGES), encoder(IMAGES), rtol=1e-5, atol=1e-5)
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "open_clip" and "merge" not in front["tags"]
    assert sha256(source) in card and sha256(pretrained_path) in card
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert_clean_failure(cli("convert", source, "-o", out, "-m", TINY, "--pretrained", pretrained_path),
                         "open_clip_model.safetensors", "--force")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def _release_linear_file(path, theta: dict, theta0: dict, model_name: str) -> None:
    """A ``torch.save`` of the release's LinearizedImageEncoder state: parameters by position in the
    release ImageEncoder's order (visual attention as Q, K, V, O linear layers), written here from
    the module order independently of the converter's code."""
    from negmerge_cli.clip import models

    def split(state: dict, block: str, layer: str, kind: str):
        if layer == "O":
            return state[f"{block}.out_proj.{kind}"]
        return state[f"{block}.in_proj_{kind}"].chunk(3, dim=0)["QKV".index(layer)]

    positions = []
    seen = set()
    for name, _ in models.skeleton(model_name).named_parameters():
        if name.startswith("transformer."):
            continue
        if name.startswith("visual.") and ".attn." in name:
            block = name.split(".attn.")[0] + ".attn"
            if block not in seen:
                seen.add(block)
                positions += [(block, layer, kind) for layer in "QKVO" for kind in ("weight", "bias")]
            continue
        positions.append(name)
    state = {"model_name": model_name}
    for index, where in enumerate(positions):
        for prefix, source in (("params", theta), ("params0", theta0)):
            value = split(source, *where) if isinstance(where, tuple) else source[where]
            state[f"model.{prefix}.{index}"] = value.clone()
    torch.save(state, path)


def test_a_release_linear_checkpoint_converts_by_position_and_proves_the_mapping(tmp_path, cli):
    from negmerge_cli.clip import models

    torch.manual_seed(0)
    pretrained = models.create_model(TINY)
    models.save_checkpoint(pretrained, tmp_path / "pretrained.safetensors", {"format": "pt"})
    theta0 = pretrained.state_dict()
    theta = {k: v + 0.01 * torch.randn_like(v) if k.startswith("visual.") and v.is_floating_point() else v
             for k, v in theta0.items()}
    _release_linear_file(tmp_path / "linear_finetuned.pt", theta, theta0, TINY)
    out = tmp_path / "theta.safetensors"
    result = cli("convert", tmp_path / "linear_finetuned.pt", "-o", out, "-m", TINY, "--pretrained",
                 tmp_path / "pretrained.safetensors", "-q")
    assert result.returncode == 0, result.stderr
    with safe_open(str(out), "pt") as handle:
        converted = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = handle.metadata()
    assert set(converted) == set(theta0)
    assert all(torch.equal(converted[k], theta[k]) for k in converted), "theta by name, attention fused"
    assert metadata["negmerge.finetuning_mode"] == "linear"
    assert metadata["negmerge.layout"].startswith("release-linear")

    # Q and K of one block swapped in the expansion point: same shapes, caught by the pretrained weights
    swapped = dict(theta0)
    block = "visual.transformer.resblocks.0.attn.in_proj_weight"
    q, k, v = theta0[block].chunk(3, dim=0)
    swapped[block] = torch.cat([k, q, v])
    _release_linear_file(tmp_path / "swapped.pt", theta, swapped, TINY)
    assert_clean_failure(cli("convert", tmp_path / "swapped.pt", "-o", out, "-m", TINY, "--pretrained",
                             tmp_path / "pretrained.safetensors", "--force"), "swapped.pt", "model.params0",
                         "resblocks.0.attn.in_proj_weight")
    assert_clean_failure(cli("convert", tmp_path / "linear_finetuned.pt", "-o", tmp_path / "b.safetensors", "-m",
                             TINY), "linearized", "--pretrained")
    assert not (tmp_path / "b.safetensors").exists()
