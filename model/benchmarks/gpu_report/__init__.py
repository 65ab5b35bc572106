"""The GPU report: one command that measures the GPU path stage by stage on a bare lent machine
and leaves JSON lines and a Markdown summary (``python -m model.gpu_report``; its help says more).

* ``config``          the stages and the sizes of the full and test modes
* ``report``          the JSON-lines record and one measurement within the deadline
* ``deadline``        each measurement's cost estimated from the one before it
* ``timing``          a step's wall, host and GPU time; ``utilisation``: NVML's GPU busy share
* ``optional``        the imports that may fail on a bare image, and why they did
* ``environment``, ``ceiling`` (and the pilot), ``end_to_end`` (with ``trainer_probe``),
  ``trainer_stages`` (with ``trainer_fields``), ``graphs``, ``loader``, ``predict``,
  ``compiled``: the stages
* ``targets``, ``summary``  gpu_report.md from the JSON lines, the issue's targets judged
* ``command``         the command line
"""
