"""Training and evaluating on shards: the shard dataset, sampler, augmentation, losses, the
train/eval loops, checkpoints, distributed helpers, early stopping, cross-validation.

``trainer.train`` composes one run from modules of one idea each: ``fold_data`` (loaders),
``run`` (the ``TrainingRun`` API; ``build``, ``resume``, ``run_record``, ``epochs``, ``finish``
are its stages), ``loop`` (step and epoch), ``evaluation_loop``, ``stopping``, ``freezing``,
``ddp``, ``selection``, ``tuning``, ``plotting``.

May import ``model.nets``, ``model.weights``, ``model.evaluation`` and ``pipeline`` (the shard
format); never the commands (``model.train`` ...).
"""
