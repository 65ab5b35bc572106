"""The GPU path on a CPU machine: host syncs per training step, the AMP choice, the flip, the
loss without list indexing, device naming under torchrun."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.engine import loop as trainer
from model.engine.distributed import DistInfo, resolve_device
from model.engine.losses import branch_bce_loss
from model.engine.precision import choose_precision
from model.engine.sync_count import count_host_syncs
from model.benchmarks.gpu_report.config import ReportConfig
from model.benchmarks.gpu_report.trainer_stages import trainer_fixture


def _fixture(batches: int, device: str = "cpu"):
    return trainer_fixture(ReportConfig(out="", small=True), torch.device(device), amp=False,
                           batches=batches)


def test_training_steps_wait_for_the_device_only_every_sync_every_steps(monkeypatch):
    monkeypatch.setattr(trainer, "SYNC_EVERY", 3)
    run = _fixture(batches=6)
    with count_host_syncs(torch.device("cpu")) as syncs:
        assert trainer.train_one_epoch(**run)
    # two sync points (after batch 3 and 6), each copying the losses and the positive counts;
    # the old loop made 3 a step (isfinite, float(loss), targets.tolist()): 18.
    assert syncs.total == 4, syncs.by_kind
    assert run["acc"].batches == 6 and run["acc"].frames == 12


def test_logged_loss_equals_the_per_step_losses_summed_in_order(monkeypatch):
    monkeypatch.setattr(trainer, "SYNC_EVERY", 4)
    run = _fixture(batches=5)
    seen: list[float] = []
    trainer.train_one_epoch(**run, on_batch_end=lambda e, b, loss: seen.append(loss))
    total = 0.0
    for v in seen:
        total += v
    assert run["acc"].loss_sum == total and len(seen) == 5
    targets = sum(batch[1].sum(0).double() for batch in run["loader"])
    frames = sum(len(batch[1]) for batch in run["loader"])
    # per AU the positives, then the frames coded (none is "not coded" here)
    assert run["acc"].positives == targets.tolist() + [float(frames)] * len(targets)


def test_the_drawn_rate_counts_only_the_frames_coded_for_each_au():
    """A "not coded" (NaN) label is neither a positive nor a frame of its AU's rate."""
    from model.engine.epochs import drawn_rate
    from model.engine.step_log import EpochAccumulator, StepLog

    acc = EpochAccumulator()
    steps = StepLog(acc, 2, torch.device("cpu"))
    nan = float("nan")
    steps.record(1, torch.tensor(0.5), torch.tensor([[1.0, nan], [0.0, nan], [1.0, 1.0]]))
    steps.record(2, torch.tensor(0.5), torch.tensor([[nan, 0.0], [1.0, 0.0]]))
    steps.flush()
    assert acc.positives == [3.0, 1.0, 4.0, 3.0]
    assert drawn_rate(torch.tensor(acc.positives, dtype=torch.float64)).tolist() == [0.75, 1 / 3]


def test_a_non_finite_loss_is_caught_at_the_next_sync_point_with_its_batch(monkeypatch):
    monkeypatch.setattr(trainer, "SYNC_EVERY", 4)
    run = _fixture(batches=4)
    calls = []

    def criterion(logits, y):
        calls.append(1)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        return loss * float("nan") if len(calls) == 2 else loss
    run["criterion"] = criterion
    with pytest.raises(trainer.NonFiniteLossError, match=r"epoch 1, batch 2 \(seen at batch 4\)"):
        trainer.train_one_epoch(**run)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_steps_between_sync_points_do_not_synchronise(monkeypatch):
    monkeypatch.setattr(trainer, "SYNC_EVERY", 1000)
    run = trainer_fixture(ReportConfig(out="", small=True), torch.device("cuda"), amp=True,
                          batches=3)
    trainer.train_one_epoch(**{**run, "acc": trainer.EpochAccumulator()})  # warm up
    precision = choose_precision(torch.device("cuda"), True)
    images, targets, _ = run["loader"][0]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            trainer.train_step(run["model"], run["criterion"], run["optimizer"], run["scaler"],
                               run["scheduler"], images, targets, torch.device("cuda"),
                               run["cfg"], precision)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_amp_is_bf16_without_scaler_where_supported_else_fp16_with_one(monkeypatch):
    cpu = choose_precision(torch.device("cpu"), amp=True)
    assert cpu.name == "bf16" and not cpu.needs_scaler
    assert choose_precision(torch.device("cpu"), amp=False).name == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    old_gpu = choose_precision(torch.device("cuda"), amp=True)
    assert old_gpu.name == "fp16" and old_gpu.needs_scaler
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    h100 = choose_precision(torch.device("cuda"), amp=True)
    assert h100.name == "bf16" and not h100.needs_scaler


def test_cv2_flip_equals_the_old_numpy_flip_bit_for_bit():
    rng = np.random.default_rng(0)
    for shape in ((224, 224, 3), (31, 17, 3)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        old = np.ascontiguousarray(image[:, ::-1])
        new = cv2.flip(image, 1)
        assert new.flags.c_contiguous and new.dtype == np.uint8
        np.testing.assert_array_equal(new, old)


def test_dataset_flip_is_the_mirror_image(tmp_path):
    from model.engine.data import ShardFrames
    from pipeline.shards import ShardReader
    from trainer_fixtures import write_subject

    path = write_subject(tmp_path / "SN001_left.h5", "SN001", n=3, size=16, seed=0)
    frames = ShardFrames([ShardReader(path)], (1, 2, 4, 6, 9, 12, 25, 26), 3)
    plain, flipped = frames[(1, False)][0].numpy(), frames[(1, True)][0].numpy()
    np.testing.assert_array_equal(flipped, np.ascontiguousarray(plain[:, ::-1]))


def test_branch_loss_without_list_indexing_equals_the_indexed_loss():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 8), (torch.rand(6, 8) > 0.5).float()
    weights = torch.rand(8) + 0.5
    for groups in ([[0, 1, 2], [3, 4], [5, 6, 7]], [[0, 5, 2], [3], [7, 4, 6, 1]]):
        per_entry = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weights
        expected = sum(per_entry[:, list(g)].mean() for g in groups)
        got = branch_bce_loss(logits, targets, groups, weights)
        assert torch.allclose(got, expected, rtol=1e-6, atol=0)


def test_cuda_n_under_torchrun_is_the_local_rank_or_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    info = DistInfo(rank=3, world=4, local_rank=1)
    assert resolve_device("cuda", info) == torch.device("cuda", 1)
    assert resolve_device("cuda:1", info) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="local rank"):
        resolve_device("cuda:0", info)
    assert resolve_device("cuda:1", DistInfo()) == torch.device("cuda", 1)


class _OpenCVThreads(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> int:
        cv2.resize(np.zeros((600, 600, 3), np.uint8), (300, 300))  # uses OpenCV's pool if any
        return cv2.getNumThreads()


def test_loader_workers_run_one_opencv_thread_and_start_after_the_parent_used_opencv():
    from model.engine.data import default_workers, single_threaded_opencv

    previous = cv2.getNumThreads()
    try:
        for _ in range(3):  # the parent's pool is busy before the fork
            cv2.GaussianBlur(np.zeros((1200, 1200, 3), np.uint8), (9, 9), 0)
        single_threaded_opencv(2)
        loader = torch.utils.data.DataLoader(_OpenCVThreads(), batch_size=1, num_workers=2,
                                             timeout=60)
        assert [int(t) for t in loader] == [1, 1]
    finally:
        cv2.setNumThreads(previous)
    assert 0 <= default_workers() <= 8 and default_workers(processes_per_node=64) == 0
