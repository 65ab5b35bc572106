"""``python -m model.bench``: entry point of :mod:`model.benchmarks.train_bench`."""
from .benchmarks.train_bench import build_parser, main  # noqa: F401  (build_parser: --help tests)

if __name__ == "__main__":
    main()
