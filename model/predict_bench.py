"""``python -m model.predict_bench``: entry point of :mod:`model.benchmarks.predict_bench`."""
from .benchmarks.predict_bench import build_parser, main  # noqa: F401  (build_parser: --help tests)

if __name__ == "__main__":
    raise SystemExit(main())
