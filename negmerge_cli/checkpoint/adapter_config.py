"""PEFT's ``adapter_config.json``: its schema, and the settings the LoRA arithmetic
(:mod:`negmerge_cli.checkpoint.lora`) reads from it, rank and alpha patterns included. PEFT's other
settings are ignored, except those under which an adapter is more than B @ A, which are refused
first (an IA3 config is named as such, not as one missing ``r``)."""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pydantic import field_validator, model_validator

from negmerge_cli.core.errors import CheckpointError
from negmerge_cli.core.schema import FieldProblem, Positive, Schema, validate
from negmerge_cli.core.strict_json import load_json, show

# Settings under which the adapter is more than B @ A on the weights: refused, naming the setting.
_REFUSED_SETTINGS = {
    "use_dora": "DoRA adapters (use_dora) are not supported; only plain LoRA",
    "modules_to_save": "it also trains whole modules (modules_to_save), which a task vector of deltas cannot hold",
    "layer_replication": "layer_replication changes the model's layers; not supported",
    "trainable_token_indices": "it trains embedding tokens (trainable_token_indices); not supported",
    "lora_bias": "it trains LoRA biases (lora_bias); not supported",
}


class AdapterConfig(Schema):
    peft_type: str
    r: Positive
    lora_alpha: float
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: Optional[dict[str, Positive]] = {}  # null (older PEFT) means none
    alpha_pattern: Optional[dict[str, float]] = {}

    @model_validator(mode="before")
    @classmethod
    def _plain_lora_only(cls, config: object) -> object:
        if isinstance(config, dict):
            refuse_unsupported(config)
        return config

    @field_validator("rank_pattern", "alpha_pattern")
    @classmethod
    def _patterns_can_be_matched(cls, patterns: Optional[dict]) -> dict:
        for key in patterns or {}:
            try:
                pattern_matcher(key)
            except ValueError as problem:
                raise FieldProblem(str(problem), key) from None
        return patterns or {}


def refuse_unsupported(config: dict) -> None:
    """ValueError (the schema's) for an adapter that is more than plain LoRA, naming the setting."""
    if config.get("peft_type") != "LORA":
        raise ValueError(f"peft_type {show(config.get('peft_type'))} is not supported; only LoRA adapters (\"LORA\") are")
    for key, reason in _REFUSED_SETTINGS.items():
        if config.get(key) not in (None, False, [], {}):
            raise ValueError(reason)
    if config.get("bias", "none") != "none":
        raise ValueError(f"bias {show(config.get('bias'))}: trained biases are not supported (only \"none\")")


@dataclass(frozen=True)
class LoraSettings:
    """What ``adapter_config.json`` says about the arithmetic."""

    r: int
    alpha: float
    use_rslora: bool
    fan_in_fan_out: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]

    def rank(self, module: str) -> int:
        return self.rank_pattern.get(_pattern_key(self.rank_pattern, module), self.r)

    def scaling(self, module: str) -> float:
        alpha = self.alpha_pattern.get(_pattern_key(self.alpha_pattern, module), self.alpha)
        rank = self.rank(module)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank


def _pattern_key(patterns: dict, module: str) -> str:
    """PEFT's ``get_pattern_key``: the first key whose pattern matches, else the module's own name."""
    return next((key for key in patterns if pattern_matcher(key).match(module)), module)


@functools.lru_cache(maxsize=1024)
def pattern_matcher(key: str):
    r"""The compiled form of PEFT's rule for a ``rank_pattern`` / ``alpha_pattern`` key,
    ``re.match(rf"(.*\.)?({key})$", module)``, for RE2: a key comes from a file, and Python's re can
    backtrack for hours on one such as ``(a+)+$`` where RE2 matches in time linear in the name.
    ValueError, saying why, for a key PEFT's re would refuse, one RE2 cannot match (backreferences,
    lookaround), or one the two engines read differently (``{,n}`` and ``[:class:]`` are literal
    text to one and syntax to the other). Python's ``$`` also matches before a final newline:
    ``\n?\z`` says the same to RE2."""
    import re2

    if "{," in key or "[:" in key:
        raise ValueError("uses '{,' or '[:', which Python's re and RE2 read differently; write it another way")
    try:
        re.compile(rf"(.*\.)?({key})$")  # compiled, never matched: PEFT's own check of the syntax
    except re.error as exc:
        raise ValueError(f"is not a valid pattern ({exc})") from None
    options = re2.Options()
    options.log_errors = False  # the reason is in the exception; RE2 would also print it to stderr
    try:
        return re2.compile(rf"(.*\.)?({key})\n?\z", options)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"cannot be matched by RE2, the linear-time engine used for patterns ({reason})") from None


def read_settings(path: Path, raw: bytes) -> LoraSettings:
    """The LoRA settings of ``adapter_config.json`` (its bytes ``raw``): strict JSON checked against
    its schema (negmerge_cli.checkpoint.adapter_config), one line naming the file and the field otherwise."""
    config = validate(AdapterConfig, load_json(raw, f"{path}:"), str(path), CheckpointError)
    return LoraSettings(r=config.r, alpha=config.lora_alpha, use_rslora=config.use_rslora,
                        fan_in_fan_out=config.fan_in_fan_out, rank_pattern=dict(config.rank_pattern),
                        alpha_pattern=dict(config.alpha_pattern))
