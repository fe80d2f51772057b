"""``negmerge demo``: the whole unlearning pipeline on built-in data, through the library stages.

tasks.py     the two built-in tasks, written as ordinary image folders
pretrain.py  a tiny CLIP that knows both tasks (cached: later runs skip it)
pipeline.py  finetune -> vector -> merge -> eval (lambda search) -> apply -> eval, per method
"""
