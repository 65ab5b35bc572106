"""Shared pytest fixtures."""
import pytest

# each twin's chain, built once a session (test_twin_end_to_end.py, test_cross_dataset_twins.py)
from twin_chains import bp4d_chain, disfa18_chain, dplus_chain, dplus_shards  # noqa: F401


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
