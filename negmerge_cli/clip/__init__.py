"""OpenCLIP support for the ``finetune`` and ``eval`` stages.

models (create/load/save OpenCLIP models), datasets (dataset specs and the paper's Val split),
templates (zero-shot prompt sets), zeroshot (classification heads), train (fine-tuning one point),
evaluate (cached zero-shot evaluation), search (the paper's lambda selection), plot (trade-off PNG).
"""
