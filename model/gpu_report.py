"""``python -m model.gpu_report``: entry point of :mod:`model.benchmarks.gpu_report`."""
from .benchmarks.gpu_report.command import build_parser, main  # noqa: F401  (--help tests)

if __name__ == "__main__":
    raise SystemExit(main())
