"""TRA-Net, its ablation variants, the trainer, evaluation and prediction on new videos.

Commands (``python -m model.X``) live at this level and stay thin: ``train``, ``evaluate``,
``crossval``, ``predict``, ``demo``, ``bench``, ``predict_bench``. Below them, one concern a
package, imports pointing down only:

* ``engine/``     training and evaluating on shards (data, sampler, losses, loops, checkpoints)
* ``inference/``  the predictor for new videos and images, its I/O and CSV output
* ``evaluation/`` metrics, tables, records, plots, the paper's numbers
* ``weights/``    reading weight files into networks
* ``nets/``       the networks and their input transform (reads no files)
"""
