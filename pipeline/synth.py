"""``python -m pipeline.synth``: entry point of :mod:`pipeline.twin` (the synthetic DISFA twin)."""
from .twin.command import build_parser, main  # noqa: F401  (--help tests)

if __name__ == "__main__":
    raise SystemExit(main())
