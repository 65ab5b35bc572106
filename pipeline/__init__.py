"""Offline DISFA pipeline: a release's frames to aligned HDF5 shards, folds and weights.

``datasets/``  dataset adapters: each release's facts and readers (``datasets/disfa/``)
``aligner/``   the parts of ``python -m pipeline.align`` (``align.py``): plan, job, summary
``alignment``  the two-point similarity that aligns a face; ``face_landmarks``: dlib
``shards``     the shard format (``shard_checks``: its structure); ``build_folds``: the folds
``twin/``      the synthetic DISFA twin (``python -m pipeline.synth``); nothing above imports it
``cli``, ``validation``, ``folder_lock``, ``image_limits``  what every command shares
"""
__version__ = "0.1.0"
