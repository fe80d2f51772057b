"""The classifier family's training recipe, where `finetune` leaves it to the family: the usual
CIFAR ResNet one, SGD (momentum 0.9) at 0.1, weight decay 5e-4, no warm-up. Torch-free, so that the
family (read at start-up) and the training loop take it from one place."""

from negmerge_cli.training.family import FinetuneDefaults

FINETUNE_DEFAULTS = FinetuneDefaults(lr=0.1, wd=5e-4, warmup_steps=0, optimizer="sgd")
