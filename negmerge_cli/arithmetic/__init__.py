"""Tensor arithmetic over checkpoints: the planner, the streaming engine, tensor selection,
BatchNorm running statistics, negation in memory and the merge methods."""
