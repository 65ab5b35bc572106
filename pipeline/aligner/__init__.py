"""The parts of ``pipeline.align`` (the command, in ``pipeline/align.py``):

``config``   AlignConfig: what a run is asked to do; drop reasons; the shard version
``plan``     one job per subject and camera, with the bad-frame ranges in use
``job``      one job: read labels and landmarks, drop, decode, warp, write the shard
``video``    sequential decoding that names file and frame; video vs. labels length
``summary``  ``align_summary.json``, its table and warnings
``frames_job``  one subject of an image-folder dataset (BP4D, DISFA+): sequences -> one shard
``frames_run``  ``--dataset bp4d|disfa+``: plan from the adapter, run, summary

Alignment reads a release only through its dataset adapter (``pipeline.datasets``) and never
imports the synthetic twin (``pipeline.twin``).
"""
