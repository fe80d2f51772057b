"""Zero-shot classification heads from the text tower (the task-arithmetic construction).

For each class: encode every template filled with the class name, L2-normalise each embedding,
average them, normalise the average; stack the classes and multiply by exp(logit_scale). Images are
L2-normalised before the head, so logits = exp(s) * cos(image, class).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from negmerge_cli.clip.templates import fill


@torch.no_grad()
def build_head(model, tokenizer, classnames: Sequence[str], templates: Sequence[str], device=None) -> torch.Tensor:
    """[num_classes, embed_dim] head weights, already scaled by exp(logit_scale)."""
    was_training = model.training
    model.eval()
    head = text_head(model, tokenizer, classnames, templates, device)
    model.train(was_training)
    return head


def text_head(model, tokenizer, classnames: Sequence[str], templates: Sequence[str], device=None) -> torch.Tensor:
    """The head construction itself, differentiable (for training the text tower too)."""
    device = device or next(model.parameters()).device
    rows = []
    for classname in classnames:
        tokens = tokenizer([fill(t, classname) for t in templates]).to(device)
        embeddings = F.normalize(model.encode_text(tokens).float(), dim=-1)
        rows.append(F.normalize(embeddings.mean(dim=0), dim=-1))
    return torch.stack(rows) * model.logit_scale.float().exp()


def logits(image_features: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    return F.normalize(image_features.float(), dim=-1) @ head.t()
