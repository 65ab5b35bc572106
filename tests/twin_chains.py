"""Each twin through the whole chain, at small sizes: ``pipeline.synth`` -> ``pipeline.align``
-> ``pipeline.build_folds`` -> ``model.train`` -> ``model.evaluate``, the commands' ``main()``
in-process. Session-scoped, so the end-to-end tests (test_twin_end_to_end.py) and the
cross-dataset tables (test_cross_dataset_twins.py) share one chain (one training) per twin.

Sizes: 32 px shards, tens of frames a subject, 1 epoch of 3 batches, the small preset. The
DISFA+ twin is written at 320x240 (at 160x120 dlib finds no face in it); the BP4D twin at its
default 260x348; the DISFA twin at 160x120 (its release landmarks need no detector)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest

# The commands are imported where used: tests/conftest.py imports this module for every
# session, and most sessions never build a chain.

#: The nine DISFA+ subjects (data_manifests/disfa_plus_test.json).
DPLUS_SUBJECTS = ["SN001", "SN003", "SN004", "SN007", "SN009", "SN010", "SN013", "SN025", "SN027"]
TRAIN = ["--preset", "small", "--epochs", "1", "--batches-per-epoch", "3", "--batch-size", "8",
         "--eval-batch-size", "64", "--lr", "0.05", "--workers", "0", "--device", "cpu",
         "--threads", "1", "--quiet"]
EVALUATE = ["--workers", "0", "--bootstrap", "0", "--device", "cpu"]


@dataclass
class Chain:
    """What each stage of one twin's chain wrote."""

    root: Path
    twin: Path
    shards: Path
    folds: Path | None = None
    run: Path | None = None
    evaluation: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def evaluation_result(self) -> dict[str, Any]:
        return json.loads((self.evaluation / "evaluation_test.json").read_text())["results"][0]


def run_ok(module: str, argv: Sequence[str]) -> None:
    """``python -m module argv`` in-process (its ``main()``), which must exit 0."""
    import importlib

    code = importlib.import_module(module).main([str(a) for a in argv])
    assert code == 0, f"{module} {' '.join(map(str, argv))}: exit {code}"


def one_thread(build: Callable[[], Chain]) -> Chain:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared 2-core machine
    try:
        return build()
    finally:
        torch.set_num_threads(threads)


def synth_and_align(root: Path, synth: Sequence[str], align: Sequence[str]) -> Chain:
    chain = Chain(root=root, twin=root / "twin", shards=root / "shards")
    run_ok("pipeline.synth", ["--out", chain.twin, "--jobs", "1", *synth])
    run_ok("pipeline.align", ["--root", chain.twin, "--out", chain.shards, "--size", "32",
                        "--jobs", "1", *align])
    return chain


def folds_train_evaluate(chain: Chain) -> Chain:
    """kfold folds of the chain's shards (one validation subject), fold 1 trained and tested."""
    run_ok("pipeline.build_folds", ["--shards", chain.shards, "--out", chain.shards,
                                    "--scheme", "kfold", "--k", "3"])
    chain.folds = chain.shards / "folds.json"
    chain.run = chain.root / "run"
    run_ok("model.train", ["--shards", chain.shards, "--manifest", chain.folds, "--fold", "1",
                        "--out", chain.run, *TRAIN])
    chain.evaluation = chain.root / "evaluation"
    run_ok("model.evaluate", ["--checkpoint", chain.run / "best.pt", "--shards", chain.shards,
                           "--manifest", chain.folds, "--fold", "1", "--out", chain.evaluation,
                           *EVALUATE])
    return chain


@pytest.fixture(scope="session")
def bp4d_chain(tmp_path_factory) -> Chain:
    """The BP4D twin (4 subjects, both release variants, 2 tasks of 20 frames), nose-chin
    alignment with dlib's chin (its alignment targets are DISFA's, so its model can be scored on
    DISFA's shards), folds, training, evaluation."""
    root = tmp_path_factory.mktemp("bp4d_chain")
    return one_thread(lambda: folds_train_evaluate(synth_and_align(
        root, ["--layout", "bp4d", "--n-subjects", "4", "--frames", "40"],
        ["--dataset", "bp4d"])))


@pytest.fixture(scope="session")
def dplus_shards(tmp_path_factory) -> Chain:
    """All nine subjects of the DISFA+ twin (2 trials of 10 frames each), aligned (dlib)."""
    root = tmp_path_factory.mktemp("dplus_chain")
    return synth_and_align(root, ["--layout", "disfa+", "--n-subjects", "9", "--frames", "20",
                                  "--width", "320", "--height", "240"], ["--dataset", "disfa+"])


@pytest.fixture(scope="session")
def dplus_chain(dplus_shards) -> Chain:
    """The DISFA+ twin's own chain (folds, training and evaluation within DISFA+)."""
    return one_thread(lambda: folds_train_evaluate(dplus_shards))


@pytest.fixture(scope="session")
def disfa18_chain(tmp_path_factory) -> Chain:
    """A DISFA twin of all 27 subjects (the 9 DISFA+ ones included, under the same names),
    trained with the shipped ``disfa_train_without_disfa_plus.json`` as it is; and DISFA's
    standard folds (``--scheme disfa3``) of the same shards, the test side of BP4D -> DISFA."""
    root = tmp_path_factory.mktemp("disfa18_chain")
    chain = synth_and_align(root, ["--n-subjects", "27", "--frames", "24", "--width", "160",
                                   "--height", "120", "--no-right-camera"], [])
    manifest = Path(__file__).resolve().parent.parent / "data_manifests" / \
        "disfa_train_without_disfa_plus.json"
    chain.run = root / "run"

    def train() -> Chain:
        run_ok("model.train", ["--shards", chain.shards, "--manifest", manifest, "--fold", "1",
                               "--out", chain.run, *TRAIN])
        return chain

    one_thread(train)
    run_ok("pipeline.build_folds", ["--shards", chain.shards, "--out", chain.shards,
                                    "--scheme", "disfa3"])
    chain.folds = chain.shards / "folds.json"
    return chain
