"""TRA-Net, its ablation variants, the trainer, evaluation and prediction on new videos.

Commands (``python -m model.X``) live at this level and stay thin: ``train``, ``evaluate``,
``crossval``, ``predict``, ``demo``, and the entry points ``bench``, ``predict_bench`` and
``gpu_report`` of the measuring tools. Below them, one concern a package, imports pointing down
only:

* ``benchmarks/`` speed and size, their synthetic inputs, the GPU report
* ``engine/``     training and evaluating on shards (data, sampler, losses, loops, checkpoints)
* ``inference/``  the predictor for new videos and images, its I/O and CSV output
* ``evaluation/`` metrics, tables, records, plots, the paper's numbers
* ``weights/``    reading weight files into networks
* ``nets/``       the networks and their input transform (reads no files)
"""
