"""PEFT's ``adapter_config.json`` (negmerge_cli.checkpoint.lora): the fields the LoRA arithmetic
reads. PEFT's other settings are ignored, except those under which an adapter is more than B @ A,
which are refused first (an IA3 config is named as such, not as one missing ``r``)."""

from __future__ import annotations

from typing import Optional

from pydantic import field_validator, model_validator

from negmerge_cli.checkpoint import lora
from negmerge_cli.schemas import FieldProblem, Positive, Schema


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
            lora.refuse_unsupported(config)
        return config

    @field_validator("rank_pattern", "alpha_pattern")
    @classmethod
    def _patterns_can_be_matched(cls, patterns: Optional[dict]) -> dict:
        for key in patterns or {}:
            try:
                lora.pattern_matcher(key)
            except ValueError as problem:
                raise FieldProblem(str(problem), key) from None
        return patterns or {}
