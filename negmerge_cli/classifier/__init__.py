"""The standard-classifier family (torchvision classifiers): models, data, forget splits,
evaluation (the unlearning metrics) and the lambda rules."""
