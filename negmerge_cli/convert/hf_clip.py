"""Hugging Face transformers CLIP (``CLIPModel``, ``CLIPVisionModel[WithProjection]``) to OpenCLIP
names (no I/O).

Both implement the same network; only the names differ, and three things change form:
- q/k/v projections are separate ``nn.Linear`` layers in transformers, one ``in_proj`` in OpenCLIP's
  ``nn.MultiheadAttention``: renamed to the split layout's ``attn.Q/K/V/O``, which the layouts fuse;
- the projections (``visual_projection``, ``text_projection``) are ``nn.Linear`` weights
  ``(out, in)`` applied as ``x W^T``; OpenCLIP stores matrices applied as ``x @ proj``: transposed;
- ``*.embeddings.position_ids`` is an index buffer OpenCLIP does not keep: dropped.
Keys no rule covers keep their name, so the fit check reports them as unexpected.
"""

from __future__ import annotations

import re

HF_CLIP = "hf-clip"

_TOWERS = [(re.compile(f"^{pattern}$"), replacement) for pattern, replacement in (
    (r"vision_model\.embeddings\.class_embedding", "visual.class_embedding"),
    (r"vision_model\.embeddings\.patch_embedding\.weight", "visual.conv1.weight"),
    (r"vision_model\.embeddings\.position_embedding\.weight", "visual.positional_embedding"),
    (r"vision_model\.pre_layrnorm\.(weight|bias)", r"visual.ln_pre.\1"),  # sic: transformers' spelling
    (r"vision_model\.encoder\.layers\.(\d+)\.(.+)", r"visual.transformer.resblocks.\1.\2"),
    (r"vision_model\.post_layernorm\.(weight|bias)", r"visual.ln_post.\1"),
    (r"visual_projection\.weight", "visual.proj"),
    (r"text_model\.embeddings\.token_embedding\.weight", "token_embedding.weight"),
    (r"text_model\.embeddings\.position_embedding\.weight", "positional_embedding"),
    (r"text_model\.encoder\.layers\.(\d+)\.(.+)", r"transformer.resblocks.\1.\2"),
    (r"text_model\.final_layer_norm\.(weight|bias)", r"ln_final.\1"),
    (r"text_projection\.weight", "text_projection"),
)]
# Inside one encoder layer (resblock).
_LAYER = [(re.compile(rf"(\.resblocks\.\d+\.){old}\."), rf"\g<1>{new}.") for old, new in (
    (r"self_attn\.q_proj", "attn.Q"),
    (r"self_attn\.k_proj", "attn.K"),
    (r"self_attn\.v_proj", "attn.V"),
    (r"self_attn\.out_proj", "attn.O"),
    (r"layer_norm1", "ln_1"),
    (r"layer_norm2", "ln_2"),
    (r"mlp\.fc1", "mlp.c_fc"),
    (r"mlp\.fc2", "mlp.c_proj"),
)]
_TRANSPOSED = ("visual_projection.weight", "text_projection.weight")


# transformers >= 5 saves CLIPVisionModel as the bare vision transformer (no `vision_model.`): its
# children, recognised by the patch embedding only it has
_BARE_VISION = "embeddings.patch_embedding.weight"
_BARE_CHILDREN = ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")


def is_hf_clip(names) -> bool:
    return _BARE_VISION in names or any(k.startswith(("vision_model.", "text_model.")) for k in names)


def renamed(names: list[str]) -> tuple[dict[str, str], frozenset[str]]:
    """OpenCLIP names (attention as the split layout's) of transformers CLIP keys, and the keys
    stored transposed; ``position_ids`` buffers are dropped."""
    bare = _BARE_VISION in names
    names_for = {}
    for key in names:
        if key.endswith("embeddings.position_ids"):
            continue
        full = f"vision_model.{key}" if bare and key.startswith(_BARE_CHILDREN) else key
        names_for[key] = open_clip_name(full)
    return names_for, frozenset(k for k in names_for if k in _TRANSPOSED)


def open_clip_name(key: str) -> str:
    """OpenCLIP's name for a transformers CLIP key (attention as the split layout's ``attn.Q/K/V/O``)."""
    for pattern, replacement in _TOWERS:
        if pattern.match(key):
            key = pattern.sub(replacement, key)
            break
    for pattern, replacement in _LAYER:
        key = pattern.sub(replacement, key)
    return key
