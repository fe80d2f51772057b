"""The "Examples" section that ends every command's ``--help``: the example lines are written here
and nowhere else, and :func:`epilog` turns them into the epilog each ``register()`` passes on.

An example is one shell command line (a long one may go on over lines ending with `` \\``). Every
line stays as written, one per line: it is neither re-wrapped into a paragraph nor read as Rich
markup (the app's command classes escape square brackets, :mod:`negmerge_cli.cli.app`), and lines
fit an 80-column terminal.
"""

from __future__ import annotations

from typer.core import DEFAULT_MARKUP_MODE

EXAMPLES: dict[str, tuple[str, ...]] = {
    "split": (
        "negmerge split --data cifar10:/data --forget-fraction 0.1 -o forget.json",
        "negmerge split --data cifar10:/data --forget-classes 3,5 -o cats-dogs.json",
        "negmerge split --data digits --forget-fraction 0.1 --seed 1 -o forget.json",
        "negmerge split --data cifar10:/data --protocol salun --forget-fraction 0.1 \\\n"
        "    -o salun-forget.json",
    ),
    "finetune": (
        "negmerge finetune -m negmerge-tiny-16 -d digits -o sweep --steps 200",
        "negmerge finetune -m ViT-B-32 -p openai -d cars:/data -o sweep \\\n"
        "    --randaug paper --lr 1e-5 --epochs 70",
        "negmerge finetune -m ViT-B-32 -p openai -d cars:/data -o sweep --list-points",
        "negmerge finetune -m resnet18-cifar -d cifar10:/data -o runs --epochs 182",
    ),
    "convert": (
        "negmerge convert finetuned.pt -o finetuned.safetensors -m ViT-B-32-quickgelu",
        "negmerge convert finetuned.pt -o cars/ -m ViT-B-32-quickgelu -p openai",
        "negmerge convert ./clip-vit-base-patch32-cars/ -o cars.safetensors \\\n"
        "    -m ViT-B-32-quickgelu -p base.safetensors",
    ),
    "vector": (
        "negmerge vector --base base.safetensors -o tau.safetensors ft.safetensors",
        "negmerge vector -b sweep/base.safetensors --out-dir taus/ sweep/lr*",
        "negmerge vector -b base/ -o tau.safetensors --include 'visual.*' ft/",
    ),
    "merge": (
        "negmerge merge --method negmerge -o tau.safetensors taus/*.safetensors",
        "negmerge merge -m ties --density 0.2 -o ties.safetensors taus/*.safetensors",
        "negmerge merge --base sweep/base.safetensors -o tau.safetensors sweep/lr*",
        "negmerge merge --base meta-llama/Llama-3.2-1B -o tau/ ORG/ft-a ORG/ft-b@v2",
    ),
    "apply": (
        "negmerge apply --base base.safetensors --vector tau.safetensors \\\n"
        "    --scale -0.9 -o unlearned.safetensors",
        "negmerge apply -b base.safetensors -v tau.safetensors -s -0.9 \\\n"
        "    --include 'visual.*' -o unlearned.safetensors",
        "negmerge apply -b ./clip-base/ -v tau.safetensors -s -1 -o unlearned/",
    ),
    "eval": (
        "negmerge eval -m ViT-B-32 -c unlearned.safetensors -d cars:/data:test",
        "negmerge eval -m ViT-B-32 -p openai -d imagenet:/data/imagenet -d cars:/data",
        "negmerge eval -m ViT-B-32 -c base.safetensors --vector tau.safetensors \\\n"
        "    --forget cars:/data --retain imagenet:/data/imagenet --json search.json",
        "negmerge eval -m resnet18-cifar -c model.safetensors -d cifar10:/data \\\n"
        "    --forget-split forget.json",
    ),
    "inspect": (
        "negmerge inspect tau.safetensors",
        "negmerge inspect model.safetensors.index.json --include 'visual.*'",
        "negmerge inspect ./clip-vit-base/ --json",
    ),
    "report": (
        "negmerge report negmerge-demo",
        "negmerge report runs/paper/cars runs/paper/dtd --published -o table.md",
        "negmerge report runs/paper --format csv -o table.csv --plot tradeoff.pdf",
    ),
    "demo": (
        "negmerge demo",
        "negmerge demo --quick --workdir /tmp/negmerge-demo",
        "negmerge demo --vary hyperparameters",
        "negmerge demo --scenario classifier",
    ),
}


def epilog(command: str, before: str = "") -> str:
    """The epilog of ``command``'s help: ``before`` (paragraphs separated by blank lines, if any),
    then "Examples:" and the command's examples, indented, one line per line.

    Typer removes the common indentation of an epilog's lines after the first (``inspect.cleandoc``),
    so the text starts with an empty line: the heading, at column 0, keeps the examples indented.
    Without Rich (``TYPER_USE_RICH=0``), Click re-wraps paragraphs unless they start with ``\\b``.
    """
    lines = "\n".join("  " + line for example in EXAMPLES[command] for line in example.split("\n"))
    keep_lines = "\b\n" if DEFAULT_MARKUP_MODE is None else ""
    section = f"{keep_lines}Examples:\n{lines}"
    return "\n" + (f"{before}\n\n{section}" if before else section)
