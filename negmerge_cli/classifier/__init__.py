"""The image-classifier model family (NegMerge's CIFAR/Tiny-ImageNet experiments): torchvision
classifiers and their small-input variants, class-labelled datasets, forget/retain splits and
from-scratch training. Shares the sweep folder, vector, merge and apply stages with ``clip/``."""
