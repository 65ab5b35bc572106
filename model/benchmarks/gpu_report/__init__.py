"""The GPU report: one command that measures the GPU path stage by stage on a bare lent machine
and leaves JSON lines and a Markdown summary (``python -m model.gpu_report``; its help says more).

* ``config``          the stages and the sizes of the full and test modes
* ``report``          the JSON-lines record, the deadline, the timing helpers
* ``environment``, ``ceiling``, ``trainer_stages``, ``loader``, ``predict``: the stages
* ``summary``         gpu_report.md from the JSON lines
* ``command``         the command line
"""
