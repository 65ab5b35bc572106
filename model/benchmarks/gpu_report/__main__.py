"""``python -m model.benchmarks.gpu_report`` (the same as ``python -m model.gpu_report``)."""
from .command import main

raise SystemExit(main())
