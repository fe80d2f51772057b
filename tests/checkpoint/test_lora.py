"""PEFT LoRA adapters as task vectors: real adapters made by ``peft`` on tiny ``transformers`` models
(a Llama with q_proj/v_proj adapted, a GPT-2 whose Conv1D c_attn needs fan_in_fan_out), converted,
merged and applied by the real CLI, and checked against a direct computation and against peft's own
``merge_and_unload``."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import assert_clean_failure, run_cli
from safetensors import safe_open
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TOKENS = torch.tensor([[1, 5, 9, 17, 33, 65, 100, 127]])
PREFIX = "base_model.model."


def _tiny_llama():
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config)


def _tiny_gpt2():
    config = transformers.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                    bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


MODELS = {  # how to build the model, how to adapt it, how many modules that adapts
    "llama": (_tiny_llama, dict(target_modules=["q_proj", "v_proj"]), 4),
    "gpt2": (_tiny_gpt2, dict(target_modules=["c_attn"], fan_in_fan_out=True), 2),
}


def _make_adapter(build, folder: Path, seed: int, **lora) -> None:
    """A peft adapter of ``build()`` (same weights for the same seed), B made non-zero (peft
    initialises it to zero, which would make every delta zero)."""
    torch.manual_seed(seed)
    model = peft.get_peft_model(build(), peft.LoraConfig(r=4, lora_alpha=8, **lora))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    model.save_pretrained(folder)


@pytest.fixture(scope="module", params=list(MODELS))
def setup(request, tmp_path_factory) -> SimpleNamespace:
    """The base model's folder (save_pretrained) and a LoRA adapter of it."""
    build, lora, modules = MODELS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    build().eval().save_pretrained(root / "base")
    _make_adapter(build, root / "adapter", seed=0, **lora)
    return SimpleNamespace(root=root, base=root / "base", adapter=root / "adapter", modules=modules)


def _expected_deltas(adapter: Path) -> dict[str, torch.Tensor]:
    """scaling * B @ A per module, computed here from the adapter's own files."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    factors = load_file(str(adapter / "adapter_model.safetensors"))
    deltas = {}
    for key, a in factors.items():
        if ".lora_A." not in key:
            continue
        module = key[len(PREFIX):].removesuffix(".lora_A.weight")
        b = factors[key.replace(".lora_A.", ".lora_B.")]
        short = module.rsplit(".", 1)[-1]
        rank = config["rank_pattern"].get(short, config["r"])
        alpha = config["alpha_pattern"].get(short, config["lora_alpha"])
        scaling = alpha / math.sqrt(rank) if config["use_rslora"] else alpha / rank
        product = b @ a
        deltas[module + ".weight"] = (product.T if config["fan_in_fan_out"] else product) * scaling
    return deltas


def test_vector_from_an_adapter_is_scaling_times_b_a_under_the_base_names(setup):
    out = setup.root / "vector.safetensors"
    result = run_cli("vector", "--base", setup.base, setup.adapter, "-o", out, "--force")
    assert result.returncode == 0, result.stderr
    vector, expected = load_file(str(out)), _expected_deltas(setup.adapter)
    assert sorted(vector) == sorted(expected) and len(expected) == setup.modules
    base = load_file(str(setup.base / "model.safetensors"))
    for name, delta in expected.items():
        assert name in base and vector[name].shape == base[name].shape
        assert vector[name].dtype == torch.float32
        assert torch.equal(vector[name], delta), name
    with safe_open(str(out), "pt") as handle:
        recorded = json.loads(handle.metadata()["negmerge.inputs"])
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
               for p in (setup.adapter / "adapter_config.json", setup.adapter / "adapter_model.safetensors")}
    assert [r["input"] for r in recorded] == [str(setup.adapter)]  # one input: the adapter folder, two files
    assert {f["file"]: f["sha256"] for r in recorded for f in r["files"]} == digests


@pytest.mark.parametrize("scale", [1.0, -1.0])
def test_apply_of_an_adapter_equals_peft_merge_and_unload(setup, scale):
    out = setup.root / f"applied{scale}.safetensors"
    result = run_cli("apply", "--base", setup.base, "--vector", setup.adapter, "--scale", scale, "-o", out, "--force")
    assert result.returncode == 0, result.stderr
    folder = setup.root / f"model{scale}"  # a loadable folder: the base's config and our weights
    folder.mkdir(exist_ok=True)
    shutil.copy(setup.base / "config.json", folder / "config.json")
    shutil.copy(out, folder / "model.safetensors")
    ours = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()

    reference = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(setup.base),
                                               setup.adapter)
    for module in reference.modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            module.set_scale("default", scale)  # scaling * scale: peft's own negation
    merged = reference.merge_and_unload().eval()
    expected = merged.state_dict()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    with torch.no_grad():
        logits, reference_logits = ours(TOKENS).logits, merged(TOKENS).logits
        base_logits = transformers.AutoModelForCausalLM.from_pretrained(setup.base).eval()(TOKENS).logits
    assert torch.allclose(logits, reference_logits, atol=1e-6)
    assert not torch.allclose(logits, base_logits, atol=1e-3)  # the adapter did change the model


def test_merge_of_adapters_with_rank_and_alpha_patterns(tmp_path, cli):
    """Two adapters (one with rsLoRA and per-module rank and alpha) merged with mean: the mean of
    their deltas; the same vectors converted first give the same result."""
    build, lora, _ = MODELS["llama"]
    torch.manual_seed(0)
    build().save_pretrained(tmp_path / "base")
    _make_adapter(build, tmp_path / "one", seed=0, **lora)
    _make_adapter(build, tmp_path / "two", seed=0, use_rslora=True, rank_pattern={"v_proj": 2},
                  alpha_pattern={"q_proj": 16}, **lora)
    out = tmp_path / "merged.safetensors"
    result = cli("merge", "-m", "mean", tmp_path / "one", tmp_path / "two", "-o", out)
    assert result.returncode == 0, result.stderr
    merged = load_file(str(out))
    one, two = _expected_deltas(tmp_path / "one"), _expected_deltas(tmp_path / "two")
    assert sorted(merged) == sorted(one)
    for name in one:
        assert torch.allclose(merged[name], (one[name] + two[name]) / 2, rtol=0, atol=1e-7), name
    assert one[next(n for n in one if "v_proj" in n)].shape == (16, 32)  # v_proj of the GQA Llama

    # rsLoRA and the patterns as peft itself computes them
    assert cli("vector", "--base", tmp_path / "base", tmp_path / "two", "-o", tmp_path / "two.safetensors").returncode == 0
    vector = load_file(str(tmp_path / "two.safetensors"))
    torch.manual_seed(0)
    build().save_pretrained(tmp_path / "base2")
    reference = peft.PeftModel.from_pretrained(build(), tmp_path / "two")
    layers = {name.removeprefix(PREFIX) + ".weight": module for name, module in reference.named_modules()
              if isinstance(module, peft.tuners.lora.LoraLayer)}
    assert sorted(layers) == sorted(vector)
    for name, layer in layers.items():
        assert torch.equal(vector[name], layer.get_delta_weight("default")), name


class _LinearAndConv1D(torch.nn.Module):
    """Deltas of 300,000 elements: more than one block of rows (256K elements), streamed in slices
    that start and end inside rows and blocks."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(100, 3000)
        self.conv = transformers.pytorch_utils.Conv1D(3000, 100)  # weight stored as in x out: 100 x 3000


@pytest.mark.parametrize("lora", [dict(target_modules=["proj"]), dict(target_modules=["conv"], fan_in_fan_out=True)])
def test_large_deltas_do_not_depend_on_the_memory_budget(tmp_path, cli, lora):
    torch.manual_seed(0)
    save_file(_LinearAndConv1D().state_dict(), str(tmp_path / "base.safetensors"))
    _make_adapter(_LinearAndConv1D, tmp_path / "adapter", seed=3, **lora)
    vectors = []
    for budget in ("100KB", "1GB"):  # slices of about 1,700 elements, or whole tensors
        out = tmp_path / f"{budget}.safetensors"
        result = cli("vector", "--base", tmp_path / "base.safetensors", tmp_path / "adapter", "-o", out,
                     "--max-memory", budget)
        assert result.returncode == 0, result.stderr
        vectors.append(load_file(str(out)))
    (name, delta), = _expected_deltas(tmp_path / "adapter").items()
    assert torch.equal(vectors[0][name], vectors[1][name])
    assert torch.allclose(vectors[0][name], delta, rtol=1e-5, atol=1e-8)


# -- refused inputs -------------------------------------------------------------------------------


def _edit_config(source: Path, target: Path, **changes) -> Path:
    shutil.copytree(source, target)
    path = target / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return target


def _edit_weights(source: Path, target: Path, edit) -> Path:
    shutil.copytree(source, target)
    path = target / "adapter_model.safetensors"
    save_file(edit(load_file(str(path))), str(path))
    return target


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> SimpleNamespace:
    build, lora, _ = MODELS["llama"]
    root = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    build().save_pretrained(root / "base")
    _make_adapter(build, root / "adapter", seed=0, **lora)
    _make_adapter(build, root / "dora", seed=0, use_dora=True, **lora)
    return SimpleNamespace(root=root, base=root / "base", adapter=root / "adapter", dora=root / "dora")


def _shrink_a(tensors: dict) -> dict:
    key = next(k for k in tensors if k.endswith("layers.1.self_attn.q_proj.lora_A.weight"))
    return {**tensors, key: tensors[key][:, :16].contiguous()}


def _rename_module(tensors: dict) -> dict:
    return {k.replace("layers.1.self_attn.v_proj", "layers.1.self_attn.w_proj"): v for k, v in tensors.items()}


def _embedding_lora(tensors: dict) -> dict:
    return {**tensors, PREFIX + "model.embed_tokens.lora_embedding_A": torch.zeros(4, 128)}


BAD_ADAPTERS = {
    "dora": (lambda s, t: s.dora, ("dora", "DoRA")),
    "other PEFT type": (lambda s, t: _edit_config(s.adapter, t, peft_type="IA3"), ("peft_type 'IA3'",)),
    "modules_to_save": (lambda s, t: _edit_config(s.adapter, t, modules_to_save=["lm_head"]), ("modules_to_save",)),
    "bias": (lambda s, t: _edit_config(s.adapter, t, bias="all"), ("bias 'all'",)),
    "bad r": (lambda s, t: _edit_config(s.adapter, t, r=0), ("adapter_config.json", "field 'r'", "got 0")),
    "rank mismatch": (lambda s, t: _edit_config(s.adapter, t, r=8), ("q_proj'", "r=8")),
    "wrong shape": (lambda s, t: _edit_weights(s.adapter, t, _shrink_a),
                    ("adapter_model.safetensors", "layers.1.self_attn.q_proj", "[32, 16]", "[32, 32]")),
    "target not in base": (lambda s, t: _edit_weights(s.adapter, t, _rename_module),
                           ("adapter_model.safetensors", "layers.1.self_attn.w_proj", "has no tensor")),
    "embedding lora": (lambda s, t: _edit_weights(s.adapter, t, _embedding_lora), ("embedding",)),
}


@pytest.mark.parametrize("case", list(BAD_ADAPTERS))
def test_unsupported_or_mismatched_adapters_are_refused_in_one_line(llama, tmp_path, cli, case):
    make, fragments = BAD_ADAPTERS[case]
    adapter = make(llama, tmp_path / "adapter")
    for command in (["vector", "--base", llama.base, adapter, "-o", tmp_path / "v.safetensors"],
                    ["apply", "--base", llama.base, "--vector", adapter, "--scale", "-1", "-o", tmp_path / "a.safetensors"]):
        assert_clean_failure(cli(*command), *fragments)
    assert not list(tmp_path.glob("*.safetensors"))


def test_malformed_or_missing_adapter_config_is_refused(llama, tmp_path, cli):
    broken = shutil.copytree(llama.adapter, tmp_path / "broken")
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4, "r": 8}')
    assert_clean_failure(cli("vector", "--base", llama.base, broken, "-o", tmp_path / "v.safetensors"),
                         "adapter_config.json", "duplicate key")
    (broken / "adapter_model.safetensors").unlink()
    (broken / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    assert_clean_failure(cli("vector", "--base", llama.base, broken, "-o", tmp_path / "v.safetensors"),
                         "adapter_model.safetensors")
    assert not list(tmp_path.glob("*.safetensors"))


def test_an_adapter_is_refused_where_a_checkpoint_is_expected(llama, tmp_path, cli):
    vector = tmp_path / "v.safetensors"
    assert_clean_failure(cli("apply", "--base", llama.adapter, "--vector", llama.adapter, "--scale", "1",
                             "-o", vector), "adapter", "not a model checkpoint")
    assert_clean_failure(cli("merge", "--base", llama.base, llama.adapter, llama.adapter, "-o", vector),
                         "adapter", "--base")
    assert not vector.exists()
