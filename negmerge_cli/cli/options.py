"""Option aliases shared by several commands, so every command spells them the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Output = Annotated[Path, typer.Option("--output", "-o", help="Output safetensors file.", dir_okay=False)]
Device = Annotated[
    str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda or cuda:N.", show_default=True)
]
Dtype = Annotated[
    Optional[str],
    typer.Option("--dtype", help="Output dtype: float32, float16, bfloat16 or float64 (default: the inputs')."),
]
MaxMemory = Annotated[
    str, typer.Option("--max-memory", help="Memory budget for tensor buffers, e.g. 512MB or 2GiB.")
]
ShardSize = Annotated[
    Optional[str],
    typer.Option("--shard-size", help="Split the output into shards of at most this size, with an index."),
]
Force = Annotated[bool, typer.Option("--force", "-f", help="Replace an existing output file.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries on stderr.")]
AllowNonFinite = Annotated[
    bool, typer.Option("--allow-nonfinite", help="Accept NaN/Inf in inputs instead of failing.")
]
MissingAsZero = Annotated[
    bool,
    typer.Option(
        "--missing-as-zero", help="Treat a tensor absent from some inputs as zero instead of failing."
    ),
]
NoHash = Annotated[
    bool,
    typer.Option("--no-hash", help="Skip the SHA-256 of the inputs in the output's metadata (faster on huge merges)."),
]
