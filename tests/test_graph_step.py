"""#25 item 3: the training step as one CUDA graph (model/engine/graph_step.py).

On a CPU the step's body runs eagerly: it traces as one torch._dynamo graph with no break, reads
nothing back to the host, trains exactly as the eager ``train_step`` (fused SGD with a device lr
tensor and the optimiser's momentum buffers), loads the momentum of an older foreach SGD's
checkpoint, and the epoch loop uses it for every batch of its shape. The capture itself needs
CUDA (skipped here)."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from model.engine import loop
from model.engine.config import TrainConfig
from model.engine.distributed import DistInfo
from model.engine.graph_step import GraphStep, graphs_wanted
from model.engine.losses import region_bce_criterion
from model.engine.precision import choose_precision
from model.engine.sync_count import count_host_syncs
from model.nets.tranet import TRANetConfig, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


def _run(batch: int = 4, size: int = 32, schedule: str = "cosine", steps: int = 4, seed: int = 0):
    """A small-preset model, its criterion, a foreach SGD (as build_run makes it), a schedule
    and ``steps`` distinct uint8 batches."""
    torch.manual_seed(seed)
    model = build_model(TRANetConfig(preset="small", image_size=size))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05,
                                momentum=0.9, weight_decay=1e-3)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
                 if schedule == "cosine" else
                 torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0))
    gen = torch.Generator().manual_seed(seed + 1)
    batches = [(torch.randint(0, 256, (batch, size, size, 3), generator=gen, dtype=torch.uint8),
                (torch.rand(batch, 8, generator=gen) > 0.6).float(), torch.arange(batch))
               for _ in range(steps)]
    cfg = TrainConfig(shards="", manifest="", fold=1, out="", preset="small", quiet=True,
                      batches_per_epoch=steps, batch_size=batch)
    return dict(model=model, criterion=region_bce_criterion(model.config.au_ids),
                optimizer=optimizer, scheduler=scheduler, batches=batches, cfg=cfg)


def _graph(run) -> GraphStep:
    return GraphStep(run["model"], run["criterion"], run["optimizer"], CPU, run["cfg"],
                     choose_precision(CPU, False), capture=False)


def _eager_steps(run, batches) -> list[float]:
    precision, scaler = choose_precision(CPU, False), choose_precision(CPU, False).grad_scaler()
    return [float(loop.train_step(run["model"], run["criterion"], run["optimizer"], scaler,
                                  run["scheduler"], images, targets, CPU, run["cfg"], precision))
            for images, targets, _ in batches]


def test_the_step_traces_as_one_graph_without_breaks_or_host_syncs():
    run = _run(steps=2)
    graph = _graph(run)
    twin = _run(steps=2)
    twin_graph = _graph(twin)
    images, targets, index = run["batches"][0]
    for g, r in ((graph, run), (twin_graph, twin)):
        assert g(images, targets, index, r["scheduler"]) is g.loss  # buffers made
    with count_host_syncs(CPU) as syncs:
        graph.step_fn()
    assert syncs.total == 0, syncs.by_kind
    twin_graph.step_fn()
    torch._dynamo.reset()
    # backward inside the traced step: dynamo traces autograd ops only when asked to
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        explained = torch._dynamo.explain(graph.step_fn)()  # runs the step through the graph
    twin_graph.step_fn()
    # what torch.compile would wrap trains as the eager body: the same weights after it
    for a, b in zip(run["model"].parameters(), twin["model"].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert explained.graph_break_count == 0, [str(r.reason)[:300] for r in explained.break_reasons]
    assert explained.graph_count == 1
    assert not explained.break_reasons  # not even a torch.compiler.disable'd call skipped
    ops = " ".join(str(n.target) for g in explained.graphs for n in g.graph.nodes)
    assert "function grad" in ops and "_fused_sgd_" in ops  # backward and update in the graph


def test_the_graphed_step_trains_as_the_eager_step():
    eager, graphed = _run(), _run()
    expected = _eager_steps(eager, eager["batches"])
    graph = _graph(graphed)
    got = [float(graph(i, t, x, graphed["scheduler"])) for i, t, x in graphed["batches"]]
    assert got == pytest.approx(expected, rel=1e-5)
    for a, b in zip(eager["model"].state_dict().values(), graphed["model"].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the cosine schedule reached the update through the device tensor
    last = 0.05 * (1 + math.cos(math.pi * 3 / 4)) / 2  # the 4th step's cosine lr (T_max 4)
    assert float(graph.lr) == pytest.approx(last, rel=1e-6)
    assert graphed["optimizer"].param_groups[0]["fused"] is True


def test_the_fused_step_continues_from_a_foreach_sgd_checkpoint():
    # last.pt of a run made before graphs: foreach SGD's state dict, with its momentum buffers
    first = _run(schedule="constant", steps=4)
    _eager_steps(first, first["batches"][:2])
    saved = {"model": copy.deepcopy(first["model"].state_dict()),
             "optimizer": copy.deepcopy(first["optimizer"].state_dict())}
    assert all("momentum_buffer" in s for s in saved["optimizer"]["state"].values())
    expected = _eager_steps(first, first["batches"][2:])  # the old run, continued eagerly

    resumed = _run(schedule="constant", steps=4)
    resumed["model"].load_state_dict(saved["model"])
    resumed["optimizer"].load_state_dict(saved["optimizer"])
    graph = _graph(resumed)
    got = [float(graph(i, t, x, resumed["scheduler"])) for i, t, x in resumed["batches"][2:]]
    assert got == pytest.approx(expected, rel=1e-5)
    for a, b in zip(first["model"].parameters(), resumed["model"].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    state = resumed["optimizer"].state_dict()  # and it saves as SGD's state dict again
    assert set(state["state"]) == set(saved["optimizer"]["state"])


def test_the_epoch_loop_uses_the_graph_and_steps_a_batch_of_another_size_eagerly(monkeypatch):
    monkeypatch.setattr(loop, "SYNC_EVERY", 2)
    eager, graphed = _run(steps=3), _run(steps=3)
    odd = (eager["batches"][0][0][:3], eager["batches"][0][1][:3], torch.arange(3))
    loader = eager["batches"] + [odd]
    calls = []
    real = loop.train_step
    monkeypatch.setattr(loop, "train_step", lambda *a, **k: calls.append(1) or real(*a, **k))

    def epoch(run, graph):
        acc, seen = loop.EpochAccumulator(), []
        cfg = TrainConfig(**{**run["cfg"].__dict__, "batches_per_epoch": 4})
        assert loop.train_one_epoch(
            run["model"], run["criterion"], run["optimizer"], loader, CPU, 1, cfg,
            choose_precision(CPU, False).grad_scaler(), run["scheduler"], acc,
            loop.StopRequest(), DistInfo(), lambda e, b, loss: seen.append(loss), graph=graph)
        return seen, acc

    expected, _ = epoch(eager, None)
    assert len(calls) == 4
    calls.clear()
    got, acc = epoch(graphed, _graph(graphed))
    assert len(calls) == 1  # only the batch of 3
    assert got == pytest.approx(expected, rel=1e-5) and acc.batches == 4
    assert acc.loss_sum == pytest.approx(sum(expected), rel=1e-5)


class _Intensities:
    """ShardFrames' lookup for the intensity loss: 12 AUs' 0-5 intensities by frame index."""

    def __init__(self, frames: int) -> None:
        self.table = torch.randint(0, 6, (frames, 12), generator=torch.Generator().manual_seed(3))

    def intensities(self, index, au_ids):
        return self.table[torch.as_tensor(index, dtype=torch.long)].float()


def test_the_graphed_step_feeds_the_intensity_loss_from_a_static_buffer():
    from model.engine.losses import task_loss_for
    from model.nets.regions import ALL_AUS

    frames = _Intensities(16)
    runs = []
    for _ in range(2):
        run = _run(steps=3)
        torch.manual_seed(0)
        run["model"] = build_model(TRANetConfig(preset="small", image_size=32,
                                                intensity_aus=tuple(ALL_AUS)))
        run["optimizer"] = torch.optim.SGD(run["model"].parameters(), lr=0.05, momentum=0.9)
        run["scheduler"] = torch.optim.lr_scheduler.LambdaLR(run["optimizer"], lambda _: 1.0)
        run["criterion"] = task_loss_for("both", run["model"].config.au_ids, ALL_AUS)
        run["batches"] = [(i, t, torch.arange(4) + 4 * k) for k, (i, t, _) in
                          enumerate(run["batches"])]
        runs.append(run)
    eager, graphed = runs
    precision = choose_precision(CPU, False)
    expected = [float(loop.train_step(eager["model"], eager["criterion"], eager["optimizer"],
                                      precision.grad_scaler(), eager["scheduler"], i, t, CPU,
                                      eager["cfg"], precision, index=x, frames=frames))
                for i, t, x in eager["batches"]]
    graph = GraphStep(graphed["model"], graphed["criterion"], graphed["optimizer"], CPU,
                      graphed["cfg"], precision, frames=frames, capture=False)
    got = [float(graph(i, t, x, graphed["scheduler"])) for i, t, x in graphed["batches"]]
    assert got == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(graph.intensity, frames.intensities(torch.arange(8, 12), ALL_AUS))


def test_cuda_graphs_auto_on_and_off(monkeypatch):
    cfg = dict(shards="", manifest="", fold=1, out="")
    fp32, ddp = choose_precision(CPU, False), DistInfo(rank=0, world=2, local_rank=0)
    assert graphs_wanted(TrainConfig(**cfg), CPU, DistInfo(), fp32)[0] is False
    with pytest.raises(ValueError, match="--cuda-graphs on: not a CUDA device"):
        graphs_wanted(TrainConfig(**cfg, cuda_graphs="on"), CPU, DistInfo(), fp32)
    gpu = torch.device("cuda", 0)
    assert graphs_wanted(TrainConfig(**cfg), gpu, DistInfo(), fp32)[0] is True
    assert graphs_wanted(TrainConfig(**cfg, cuda_graphs="off"), gpu, DistInfo(), fp32)[0] is False
    assert graphs_wanted(TrainConfig(**cfg), gpu, ddp, fp32)[0] is False
    assert graphs_wanted(TrainConfig(**cfg, compile=True), gpu, DistInfo(), fp32)[0] is False
    assert graphs_wanted(TrainConfig(**cfg, compile=True, cuda_graphs="on"), gpu, DistInfo(),
                         fp32)[0] is True
    with pytest.raises(ValueError, match="torchrun"):
        graphs_wanted(TrainConfig(**cfg, cuda_graphs="on"), gpu, ddp, fp32)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    fp16 = choose_precision(gpu, True)
    assert fp16.needs_scaler and graphs_wanted(TrainConfig(**cfg), gpu, DistInfo(), fp16)[0] is False
    with pytest.raises(ValueError, match="GradScaler"):
        graphs_wanted(TrainConfig(**cfg, cuda_graphs="on"), gpu, DistInfo(), fp16)


def test_cuda_graphs_on_without_cuda_is_one_line_and_exit_2(tmp_path, capsys):
    from model import train as train_cmd
    from trainer_fixtures import make_dataset

    shards, manifest = make_dataset(tmp_path / "tiny", frames=8, size=32)
    code = train_cmd.main(["--shards", str(shards), "--manifest", str(manifest), "--fold", "1",
                           "--out", str(tmp_path / "run"), "--preset", "small", "--device", "cpu",
                           "--cuda-graphs", "on", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err)
    assert "--cuda-graphs on: not a CUDA device" in err[-1]
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_the_captured_step_trains_as_the_eager_step_on_cuda(amp):
    gpu = torch.device("cuda")
    eager, graphed = _run(steps=5), _run(steps=5)
    precision = choose_precision(gpu, amp)
    for run in (eager, graphed):
        run["model"].to(gpu)
    expected = [float(loop.train_step(eager["model"], eager["criterion"], eager["optimizer"],
                                      precision.grad_scaler(), eager["scheduler"], i, t, gpu,
                                      eager["cfg"], precision))
                for i, t, _ in eager["batches"]]
    graph = GraphStep(graphed["model"], graphed["criterion"], graphed["optimizer"], gpu,
                      graphed["cfg"], precision)
    got = [float(graph(i, t, x, graphed["scheduler"])) for i, t, x in graphed["batches"]]
    assert graph.graph is not None
    tol = 2e-2 if amp else 1e-4
    assert got == pytest.approx(expected, rel=tol)
    for a, b in zip(eager["model"].parameters(), graphed["model"].parameters()):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
