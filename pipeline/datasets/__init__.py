"""Dataset adapters: how one AU dataset's release is read, apart from alignment and shards.

Everything after an adapter (``pipeline.align``'s per-subject job, the shards, the folds) sees
a dataset through what its adapter provides, one sub-package per dataset (``disfa/`` today):

* **facts**: its subjects and the pattern their names follow, the AUs it codes and the ones it
  is evaluated on, frames per subject and frame rate, the landmark scheme (how many points,
  which ones are the nose and chin alignment uses), its bad-frame ranges and standard folds;
* **layout**: ``discover(root)`` maps a release folder to one entry per subject saying where
  its **frames** (one video per camera), **labels** and **landmarks** are, and raises one error
  type (a ``CommandError``) whose message names the file;
* **labels**: per subject, an ``[N, n_AUs]`` array of integer intensities, row i = frame i;
* **landmarks**: per subject, ``[N, n_points, 2]`` 0-based pixel coordinates with which frames
  are missing, for the two-point alignment of ``pipeline.alignment``;
* **error log**: the frame ranges the dataset's authors mark as unusable.

Image-folder datasets (BP4D, DISFA+) follow the protocol of ``base.DatasetAdapter``;
``adapters.get_adapter(name)`` gives one (imported only when asked for).

An adapter reads; it never writes shards and knows nothing of the synthetic twin
(``pipeline.twin``), which writes a release in DISFA's layout for the adapter to read.
"""
