"""Training and evaluating on shards: the shard dataset, sampler, augmentation, losses, the
train/eval loops, checkpoints, distributed helpers, early stopping, cross-validation.

May import ``model.nets``, ``model.weights``, ``model.evaluation`` and ``pipeline`` (the shard
format); never the commands (``model.train`` ...).
"""
