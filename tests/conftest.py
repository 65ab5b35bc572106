"""Shared pytest fixtures."""
import pytest

# each twin's chain, built once a session (test_twin_end_to_end.py, test_cross_dataset_twins.py)
from twin_chains import bp4d_chain, disfa18_chain, dplus_chain, dplus_shards  # noqa: F401


#: The small demo (test_demo.py checks that it learns; test_int8_export.py quantises its model):
#: 8 subjects of 120 frames, 64 px, fold 1 of 4 trained for 20 short epochs with an intensity head.
SMALL_DEMO = ["--n-subjects", "8", "--frames", "120", "--frame-width", "320", "--frame-height",
              "240", "--size", "64", "--k", "4", "--val-subjects", "1", "--folds", "1",
              "--epochs", "20", "--batches-per-epoch", "20", "--batch-size", "32", "--jobs", "1",
              "--threads", "1", "--predict-subjects", "1", "--quiet"]


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory):
    """(demo folder, report, argv) of one ``model.demo`` run at the SMALL_DEMO size, once a
    session (~45 s); tests read it and must not change it."""
    import torch

    from model.demo import build_parser, run_demo

    out = tmp_path_factory.mktemp("small_demo") / "demo"
    argv = ["--out", str(out), *SMALL_DEMO]
    threads = torch.get_num_threads()
    try:
        report = run_demo(build_parser().parse_args(argv))
    finally:
        torch.set_num_threads(threads)
    return out, report, argv


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tiny-tensor tests on one torch thread.

    With tensors this small, OpenMP threads mostly spin-wait, which on a shared 2-core machine
    slows everything else down more than it helps.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    """A disk-full test leaves HDF5 handles that cannot be freed without crashing the library, so
    ``pipeline.shards`` ends such a process with ``os._exit(pipeline.cli.LAST_EXIT_CODE)``: that
    code must be pytest's own status, not the last in-process command's."""
    import pipeline.cli

    pipeline.cli.LAST_EXIT_CODE = int(session.exitstatus)
