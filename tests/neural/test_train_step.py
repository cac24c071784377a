"""The batched DeepSets training step (docs/model.md §3): its sampler draws exactly the definition's
successors, its pooling paths are one function, its clipping is ``clip_grad_norm_``'s rule, and it
reads nothing on the host outside logging steps."""

from __future__ import annotations

import dataclasses
import math

import lightning.pytorch as pl
import pytest
import torch

from sqtorch.envs import make_env
from sqtorch.envs import simulator as sim
from sqtorch.neural import deepsets
from sqtorch.neural.data import DataConfig, GenerativeSource
from sqtorch.neural.deepsets import POOLINGS, DeepSetsQ
from sqtorch.neural.module import SubsampleQModule, adam_step, clip_grad_norm
from sqtorch.tabular.counts import all_counts, counts_of
from tests.helpers.host_reads import HostReads

pytestmark = pytest.mark.usefixtures("one_thread")


def _draw(P: torch.Tensor, rows: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The definition: outcome j with cdf[j-1] <= u < cdf[j] (last cdf value set to 1), by binary search."""
    cdf = P.reshape(-1, P.shape[-1]).cumsum(-1)
    cdf[:, -1] = 1.0
    return torch.searchsorted(cdf[rows.reshape(-1)], u.reshape(-1, 1), right=True).reshape(u.shape)


@pytest.mark.parametrize("name", ["queue", "demand_response"])
def test_inverse_cdf_draws_equal_the_definition_on_both_paths(name, monkeypatch):
    env = make_env(name)
    gen = torch.Generator().manual_seed(0)
    for P in (env.P_g, env.P_l):
        cdf_cols = sim.cdf_columns(P)
        rows = torch.randint(cdf_cols.shape[1], (4000,), generator=gen)
        u = torch.rand(4000, generator=gen, dtype=torch.float64)
        want = _draw(P, rows, u)
        for gather_max in (0, 10_000):  # the loop over outcomes, then the one-gather path
            monkeypatch.setattr(sim, "GATHER_MAX_K", gather_max)
            assert torch.equal(sim.sample_categorical(cdf_cols, rows, u), want), gather_max


@pytest.mark.parametrize("name", ["queue", "demand_response"])
def test_successors_are_the_definitions_draws(name):
    """Same generator state -> the successors of the inverse-CDF definition, uniform by uniform."""
    env = make_env(name)
    n, k, m, B = 12, 5, 6, 64
    src = GenerativeSource(env, n, k, m, DataConfig("uniform"), seed=4)
    s_g, s_sub = src.sample_states(B)
    a_g = torch.randint(env.A, (B,), generator=src.gen)
    state = src.gen.get_state()
    g_next, c_next = src.successors(s_g, s_sub, a_g)
    gen = torch.Generator()
    gen.set_state(state)
    u_g = torch.rand(B, m, generator=gen, dtype=torch.float64)
    u_l = torch.rand(B, m, k, generator=gen, dtype=torch.float64)
    ga = (s_g * env.A + a_g)[:, None].expand(B, m)
    assert torch.equal(g_next, _draw(env.P_g, ga, u_g))
    x_next = _draw(env.P_l, ga[..., None] * env.L + s_sub[:, None, :], u_l)
    assert torch.equal(c_next, counts_of(x_next, env.L))


def test_successor_frequencies_fit_the_local_kernel():
    """Chi-square (p = 0.001) of one agent's next local state against its row of P_l."""
    env = make_env("demand_response")
    m = 40_000
    src = GenerativeSource(env, 4, 1, m, DataConfig("uniform"), seed=1)
    g, a, x = 2, 1, 7
    _, c_next = src.successors(torch.tensor([g]), torch.tensor([[x]]), torch.tensor([a]))
    observed = c_next[0].sum(0).double()
    p = env.P_l[g, a, x]
    support = p > 0
    assert observed[~support].sum() == 0  # zero-probability states are never drawn
    expected = m * p[support]
    chi2 = ((observed[support] - expected) ** 2 / expected).sum().item()
    dof = int(support.sum()) - 1
    z = 3.09  # Wilson-Hilferty 0.999 quantile of chi2(dof)
    bound = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3 if dof > 0 else 0.0
    assert chi2 <= bound, (chi2, bound, dof)


@pytest.mark.parametrize("pooling", [p for p in POOLINGS if p != "max"])
@pytest.mark.parametrize("global_in_phi", [True, False])
@pytest.mark.parametrize("wide", [False, True])
def test_every_pooling_path_is_the_per_agent_network(pooling, global_in_phi, wide, monkeypatch):
    """The dense product, the gather path for wide tables and a reused table all equal forward()."""
    if wide:
        monkeypatch.setattr(deepsets, "DENSE_POOL_MAX", 0)
    torch.manual_seed(0)
    net = DeepSetsQ(G=4, L=6, A=3, hidden=16, embed_dim=4, pooling=pooling, global_in_phi=global_in_phi,
                    rho_layers=3).double()
    gen = torch.Generator().manual_seed(2)
    s_g = torch.randint(4, (50,), generator=gen)
    s_sub = torch.randint(6, (50, 7), generator=gen)
    want = net(s_g, s_sub)
    c = counts_of(s_sub, 6)
    torch.testing.assert_close(net.forward_counts(s_g, c), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(net.forward_counts(s_g, c, net.hidden_table()), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-3, 1e3])
def test_clip_grad_norm_is_torchs_rule(scale):
    torch.manual_seed(0)
    a, b = DeepSetsQ(4, 5, 3).double(), DeepSetsQ(4, 5, 3).double()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        pa.grad = torch.randn_like(pa) * scale
        pb.grad = pa.grad.clone()
    clip_grad_norm(list(a.parameters()), 10.0)
    torch.nn.utils.clip_grad_norm_(b.parameters(), 10.0)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-12, atol=0)


def _adam_pair(weight_decay: float) -> tuple[list, list]:
    torch.manual_seed(0)
    a = DeepSetsQ(4, 5, 3)
    b = DeepSetsQ(4, 5, 3)
    b.load_state_dict(a.state_dict())
    out = []
    for net in (a, b):
        opt = torch.optim.Adam(net.parameters(), lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay,
                               fused=True)
        out.append((list(net.parameters()), opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)))
    return out


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_step_is_adams_step_bit_for_bit(weight_decay, monkeypatch):
    """adam_step's direct kernel call leaves the parameters and Adam's state as optimizer.step() does,
    over several steps of a cosine schedule, and is the path taken once Adam has its state."""
    (pa, opt_a, sched_a), (pb, opt_b, sched_b) = _adam_pair(weight_decay)
    gen = torch.Generator().manual_seed(1)
    for t in range(6):
        for x, y in zip(pa, pb, strict=True):
            x.grad = torch.randn(x.shape, generator=gen)
            y.grad = x.grad.clone()
        if t == 1:  # from here on the state exists: a fallback to step() would fail the test
            monkeypatch.setattr(opt_a, "step", lambda: pytest.fail("adam_step fell back to optimizer.step()"))
        adam_step(opt_a)
        opt_b.step()
        sched_a.step()
        sched_b.step()
        for x, y in zip(pa, pb, strict=True):
            assert torch.equal(x, y)
    for x, y in zip(pa, pb, strict=True):
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt_a.state[x][name], opt_b.state[y][name])


def test_adam_step_counts_survive_a_state_dict_round_trip(tmp_path):
    """adam_step keeps the step counts as views of one tensor; a checkpoint of that state loads (weights only)
    into a fresh optimizer, and both go on exactly as Adam.step() does."""
    (pa, opt_a, _), (pb, opt_b, _) = _adam_pair(0.0)
    gen = torch.Generator().manual_seed(2)

    def both_step(opt_x, px, opt_y, py):
        for x, y in zip(px, py, strict=True):
            x.grad = torch.randn(x.shape, generator=gen)
            y.grad = x.grad.clone()
        adam_step(opt_x)
        opt_y.step()

    for _ in range(3):
        both_step(opt_a, pa, opt_b, pb)
    steps = [opt_a.state[p]["step"] for p in pa]
    assert len({s.untyped_storage().data_ptr() for s in steps}) == 1  # one shared tensor
    assert all(float(s) == 3.0 for s in steps)
    torch.save(opt_a.state_dict(), tmp_path / "opt.pt")
    opt_c = torch.optim.Adam(pa, lr=3e-3, betas=(0.8, 0.95), eps=1e-6, fused=True)
    opt_c.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for _ in range(3):
        both_step(opt_c, pa, opt_b, pb)
        for x, y in zip(pa, pb, strict=True):
            assert torch.equal(x, y)
    for x, y in zip(pa, pb, strict=True):
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt_c.state[x][name], opt_b.state[y][name])


def test_adam_step_takes_optimizer_step_where_it_must():
    """A step hook, a non-fused Adam or another optimizer go through optimizer.step() (hooks run)."""
    (pa, opt_a, _), _ = _adam_pair(0.0)
    for p in pa:
        p.grad = torch.ones_like(p)
    adam_step(opt_a)  # first step: creates the state
    calls = []
    handle = opt_a.register_step_post_hook(lambda *args: calls.append(1))
    adam_step(opt_a)
    handle.remove()
    assert calls == [1]
    for opt in (torch.optim.Adam(pa, foreach=True), torch.optim.SGD(pa, lr=0.1)):
        opt.register_step_pre_hook(lambda *args: calls.append(2))
        adam_step(opt)
    assert calls == [1, 2, 2]


@pytest.mark.parametrize("state_dist", ["visited", "simplex"])
def test_training_step_reads_nothing_on_the_host_in_sync_free_mode(state_dist, monkeypatch):
    """The CUDA branches, run on the CPU: a non-logging step (sample, targets, update) has no host read."""
    from sqtorch import runtime

    monkeypatch.setattr(runtime, "sync_free", lambda t: True)  # as on CUDA
    module = SubsampleQModule({"_target_": "sqtorch.envs.queue"}, n=10, k=4,
                              algo={"batch_size": 32, "max_steps": 6, "data": {"state_dist": state_dist}},
                              eval={"reference": "none"})
    reads: list[list[str]] = []
    step = module.training_step

    def counted(*args, **kwargs):
        with HostReads() as mode:
            out = step(*args, **kwargs)
        reads.append(mode.names)
        return out

    monkeypatch.setattr(module, "training_step", counted)
    trainer = pl.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         log_every_n_steps=1000)
    trainer.fit(module)
    assert len(reads) == 6 and all(r == [] for r in reads), reads
    assert trainer.global_step == 6


def test_a_checkpoint_counted_by_automatic_optimization_resumes_at_its_step(make_cfg, tmp_path):
    """Checkpoints whose steps Lightning counted under automatic optimization resume at their step."""
    from sqtorch.experiment import run

    common = ("debug=fast", "trainer=cpu", "logger=none", "algo.max_steps=30")
    run(make_cfg(*common, "algo.max_steps=20", out=tmp_path / "a"))
    ckpt = torch.load(tmp_path / "a" / "checkpoints" / "step-20.ckpt", weights_only=False)
    loop = ckpt["loops"]["fit_loop"]
    manual = loop["epoch_loop.manual_optimization.optim_step_progress"]
    assert manual["total"]["completed"] == 20
    loop["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"] = {
        key: dict(value) for key, value in manual.items()
    }
    for part in manual.values():
        part.update(ready=0, completed=0)
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    metrics = run(make_cfg(*common, f"ckpt_path='{old}'", out=tmp_path / "b"))
    assert metrics["train/global_step"] == 30
    assert metrics["train/samples"] == 30 * 32  # debug=fast: batch 32; 20 restored + 10 new steps


class _WatchesGradients(pl.Callback):
    """A callback that listens to the update's hooks: the step must then go through Lightning's dispatch."""

    def __init__(self) -> None:
        self.calls = {"on_before_backward": 0, "on_after_backward": 0, "on_before_optimizer_step": 0}

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.calls["on_before_backward"] += 1

    def on_after_backward(self, trainer, pl_module) -> None:
        self.calls["on_after_backward"] += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.calls["on_before_optimizer_step"] += 1


def _fit(steps: int, callbacks: list) -> tuple[SubsampleQModule, pl.Trainer]:
    torch.manual_seed(0)
    module = SubsampleQModule({"_target_": "sqtorch.envs.queue"}, n=10, k=4,
                              algo={"batch_size": 32, "max_steps": steps, "target_sync": 3}, eval={"reference": "none"})
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         deterministic=True, callbacks=callbacks)
    trainer.fit(module)
    return module, trainer


def test_direct_update_is_lightnings_update_bit_for_bit():
    """Without listeners the step calls backward and Adam itself (direct_update_ok); with a callback that
    watches the update, Lightning dispatches its hooks every step. Same weights, same step count."""
    direct, t1 = _fit(7, [])
    watcher = _WatchesGradients()
    hooked, t2 = _fit(7, [watcher])
    assert direct._direct is True and hooked._direct is False
    assert watcher.calls == dict.fromkeys(watcher.calls, 7)
    assert t1.global_step == t2.global_step == 7
    for a, b in zip(direct.net.state_dict().values(), hooked.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    opt_a, opt_b = t1.optimizers[0].state_dict()["state"], t2.optimizers[0].state_dict()["state"]
    for key in opt_a:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt_a[key][name], opt_b[key][name])


def test_step_without_the_deterministic_fill_trains_the_same_net(monkeypatch):
    """The step skips deterministic mode's fill of new memory (runtime.no_deterministic_fill) and
    restores the setting after it; with the fill on (NaN in every uninitialized float) the same
    weights come out bit for bit, so the step reads no uninitialized memory."""
    from contextlib import nullcontext

    from sqtorch.neural import module as module_mod

    inside, after = [], []
    td_loss = SubsampleQModule.td_loss

    def watched(self):  # the flag during the step
        inside.append(torch.utils.deterministic.fill_uninitialized_memory)
        return td_loss(self)

    class After(pl.Callback):
        def on_train_batch_end(self, *args: object) -> None:
            after.append(torch.utils.deterministic.fill_uninitialized_memory)

    monkeypatch.setattr(SubsampleQModule, "td_loss", watched)
    skipped, _ = _fit(9, [After()])
    assert inside == [False] * 9 and after == [True] * 9  # skipped in the step, restored after it
    monkeypatch.setattr(module_mod, "no_deterministic_fill", nullcontext)
    filled, _ = _fit(9, [])
    for a, b in zip(skipped.net.state_dict().values(), filled.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_batch_and_target_below_autograd_dispatch_train_the_same_net(monkeypatch):
    """The batch (GenerativeSource.sample) and the TD target are computed below autograd's dispatch
    (runtime.no_autograd_dispatch); under plain ``torch.no_grad`` instead the same weights come out
    bit for bit, and the guard is entered twice per step."""
    from contextlib import contextmanager

    from sqtorch.neural import data as data_mod
    from sqtorch.neural import module as module_mod
    from sqtorch.runtime import no_autograd_dispatch

    entered = []

    @contextmanager
    def counted():
        entered.append(1)
        with no_autograd_dispatch():
            yield

    for mod in (data_mod, module_mod):
        monkeypatch.setattr(mod, "no_autograd_dispatch", counted)
    guarded, _ = _fit(9, [])
    assert len(entered) == 2 * 9
    for mod in (data_mod, module_mod):
        monkeypatch.setattr(mod, "no_autograd_dispatch", torch.no_grad)
    plain, _ = _fit(9, [])
    for a, b in zip(guarded.net.state_dict().values(), plain.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert guarded.source.state_dict()["gen"].equal(plain.source.state_dict()["gen"])


def test_plain_attributes_skip_module_registration_but_are_set():
    """Lightning sets ``_current_fx_name`` around every hook, the step ``samples``: the module's fast
    path stores them as nn.Module would (plain attributes, nothing registered); others take nn.Module's path."""
    module = SubsampleQModule({"_target_": "sqtorch.envs.queue"}, n=6, k=3, algo={"max_steps": 1},
                              eval={"reference": "none"})
    module._current_fx_name = "training_step"
    module.samples = 7
    assert (module._current_fx_name, module.samples) == ("training_step", 7)
    assert vars(module)["samples"] == 7 and "samples" not in module.state_dict()
    module.extra = torch.nn.Linear(2, 2)  # not on the fast path: registered as a submodule
    assert "extra" in module._modules and "extra.weight" in module.state_dict()


@pytest.mark.parametrize("ours", [True, False])
def test_td_loss_reaches_the_progress_bar(ours, capsys):
    """With a StepProgressBar the module hands the bar its TD loss in ``bar_metrics`` (no ``self.log``, so
    Lightning's progress-bar metrics stay empty); any other bar gets it through ``self.log``. Either
    way the bar shows the loss of the last logging step."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    from sqtorch.neural.progress import StepProgressBar

    bar = StepProgressBar(refresh_rate=5) if ours else TQDMProgressBar(refresh_rate=5)
    module = SubsampleQModule({"_target_": "sqtorch.envs.queue"}, n=6, k=3,
                              algo={"batch_size": 16, "max_steps": 10}, eval={"reference": "none"})
    logged = []

    class Loss(pl.loggers.logger.DummyLogger):
        def log_metrics(self, metrics, step=None) -> None:
            logged.append(metrics["train/td_loss"])

    trainer = pl.Trainer(accelerator="cpu", max_steps=10, logger=Loss(), enable_checkpointing=False,
                         enable_model_summary=False, limit_val_batches=0, log_every_n_steps=5, callbacks=[bar])
    trainer.fit(module)
    assert len(logged) == 2
    assert ("train/td_loss" in trainer.progress_bar_metrics) is not ours
    assert bar.get_metrics(trainer, module)["train/td_loss"] == pytest.approx(logged[-1])
    shown = capsys.readouterr()
    assert "train/td_loss=" in shown.out + shown.err


def test_validation_metrics_are_the_same_without_the_deterministic_fill():
    """validation_step evaluates under runtime.no_deterministic_fill: the same metrics as with the fill."""
    from sqtorch.runtime import no_deterministic_fill

    module = SubsampleQModule({"_target_": "sqtorch.envs.queue"}, n=6, k=3, algo={"max_steps": 1},
                              eval={"num_initial": 4, "rollouts": 4})
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        filled = module.evaluate(reuse=False)
        with no_deterministic_fill():
            skipped = module.evaluate(reuse=False)
    finally:
        torch.use_deterministic_algorithms(before)
    assert "eval/gap" in filled and filled == skipped


def test_evaluation_after_fit_reuses_the_last_validation_and_follows_the_weights(monkeypatch):
    """Validations at steps 2 and 4 of a 4-step fit: the evaluation after fit (same weights) is the step-4
    validation's, not recomputed, and equal to a fresh computation; a weight change or another eval
    config computes again."""
    from sqtorch.neural import module as module_mod

    calls = []
    compute = module_mod.validation_metrics

    def counted(*args, **kwargs):
        calls.append(1)
        return compute(*args, **kwargs)

    monkeypatch.setattr(module_mod, "validation_metrics", counted)
    module = SubsampleQModule({"_target_": "sqtorch.envs.queue"}, n=6, k=3, algo={"batch_size": 16, "max_steps": 4},
                              eval={"every": 2, "num_initial": 4, "rollouts": 4})
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, val_check_interval=2,
                         limit_val_batches=1, num_sanity_val_steps=0, deterministic=True)
    trainer.fit(module)
    assert len(calls) == 2
    after = module.evaluate()
    assert len(calls) == 2 and "eval/gap" in after
    after["eval/extra"] = 1.0  # the caller's copy: the kept metrics do not change
    assert "eval/extra" not in module.evaluate()
    assert module.evaluate(reuse=False) == {k: v for k, v in after.items() if k != "eval/extra"}
    assert len(calls) == 3
    with torch.no_grad():
        module.net.rho[-1].bias.add_(1.0)
    module.evaluate()
    assert len(calls) == 4
    module.eval_cfg = dataclasses.replace(module.eval_cfg, rollouts=2)
    module.evaluate()
    assert len(calls) == 5


def test_frozen_hidden_table_follows_every_weight_change():
    """The target network's cached table is hidden_table() and is recomputed after any change of weights."""
    torch.manual_seed(0)
    online, target = DeepSetsQ(4, 5, 3), DeepSetsQ(4, 5, 3)
    first = target.frozen_hidden_table()
    assert not first.requires_grad and torch.equal(first, target.hidden_table().detach())
    assert target.frozen_hidden_table() is first  # unchanged weights: the same tensor
    target.load_state_dict(online.state_dict())  # a sync
    assert torch.equal(target.frozen_hidden_table(), online.hidden_table().detach())
    with torch.no_grad():
        target.phi[0].weight.add_(1.0)  # any in-place change (a Polyak step, a user's edit)
    assert torch.equal(target.frozen_hidden_table(), target.hidden_table().detach())
    target.double()  # a dtype or device move
    assert target.frozen_hidden_table().dtype == torch.float64


def test_frozen_by_value_follows_an_optimizer_step():
    """A fused Adam step changes the weights but (torch 2.13) no version counter, which the default key
    reads: the by-value cache (for a network being trained) recomputes; unchanged weights reuse it."""
    torch.manual_seed(0)
    net = DeepSetsQ(4, 5, 3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, fused=True)
    by_value = net.frozen("value", net.hidden_table, by_value=True)
    assert net.frozen("value", net.hidden_table, by_value=True) is by_value  # unchanged weights
    net.hidden_table().sum().backward()
    adam_step(opt)  # the first step (Adam.step) creates the state
    fresh = net.frozen("value", net.hidden_table, by_value=True)
    assert not torch.equal(fresh, by_value) and torch.equal(fresh, net.hidden_table().detach())


def _floyd_reference(n: int, k: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """Floyd's algorithm as written before the column version: k draws, the same values."""
    out = torch.empty(batch, k, dtype=torch.int64)
    for i in range(k):
        j = n - k + i
        t = torch.randint(j + 1, (batch,), generator=gen)
        out[:, i] = torch.where((out[:, :i] == t[:, None]).any(1), j, t)
    return out


@pytest.mark.parametrize(("n", "k"), [(10, 1), (10, 4), (64, 4), (64, 16), (7, 5), (600, 3), (2000, 3)])
def test_floyd_subset_draws_are_unchanged(n, k):
    """The one-draw path (lcm(n-k+1..n) < 2^28: all but (64, 16) and (2000, 3), lcm 4.0e9; (600, 3) has
    lcm 1.07e8) gives the column-by-column draws' values and generator state."""
    one_draw = math.lcm(*range(n - k + 1, n + 1)) < sim.FLOYD_ONE_DRAW_MAX
    assert (sim._floyd_moduli(n, k, torch.device("cpu")) is not None) == one_draw
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got = sim._floyd_subset(n, k, 500, gen_a)
    assert torch.equal(got, _floyd_reference(n, k, 500, gen_b))
    assert torch.equal(gen_a.get_state(), gen_b.get_state())
    assert (got.sort(1).values.diff(1) > 0).all() and got.min() >= 0 and got.max() < n  # k distinct agents


@pytest.mark.parametrize(("pooling", "global_in_phi"), [("mean", True), ("sum", False), ("max", True)])
def test_target_from_the_value_table_is_the_forward_pass(pooling, global_in_phi, monkeypatch):
    """max_a' Q_target read from frozen_values equals the forward pass over the B * m successors, bit for bit."""
    torch.manual_seed(1)
    module = SubsampleQModule({"_target_": "sqtorch.envs.queue"}, n=20, k=5,
                              algo={"m": 6, "net": {"pooling": pooling, "global_in_phi": global_in_phi}},
                              eval={"reference": "none"})
    with torch.no_grad():
        for p in module.target_net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    b = GenerativeSource(module.env, 20, 5, 6, DataConfig("simplex"), seed=2).sample(300)
    assert module._target_by_table(300 * 6)
    by_table = module.td_target(b.r, b.g_next, b.c_next)
    monkeypatch.setattr(module, "_target_by_table", lambda rows: False)
    assert torch.equal(by_table, module.td_target(b.r, b.g_next, b.c_next))


def test_frozen_values_hold_every_count_vector_and_follow_the_weights():
    torch.manual_seed(0)
    net = DeepSetsQ(3, 4, 2)
    k = 3
    V, w = net.frozen_values(k)
    c = all_counts(k, 4)[torch.randperm(math.comb(k + 3, k))]  # every count vector of k agents, shuffled
    for g in range(3):  # (a BLAS may round a batch of 2 or 3 rows differently: 20 rows here)
        want = net.forward_counts(torch.full((len(c),), g), c).max(-1).values.detach()
        assert torch.equal(V[g * (k + 1) ** 4 + (c * w).sum(-1)], want)
    assert int((~V.isnan()).sum()) == 3 * math.comb(k + 3, k)  # exactly the count vectors of k agents
    with torch.no_grad():
        net.rho[-1].bias.add_(1.0)  # a later layer too: the values change
    V2, _ = net.frozen_values(k)
    finite = ~V.isnan()
    torch.testing.assert_close(V2[finite], V[finite] + net.q_scale)


def test_value_table_is_used_only_where_it_pays(monkeypatch):
    queue = SubsampleQModule({"_target_": "sqtorch.envs.queue"}, n=64, k=4, eval={"reference": "none"})
    assert queue._target_by_table(256 * 8)  # 4 * C(8, 4) = 280 rows per sync instead of 2048 per step
    assert not queue._target_by_table(10)  # 2 * 280 rows per sync > 10 rows * 20 steps
    queue.algo.double_q = True  # the online network's argmax at each successor: the forward pass
    assert not queue._target_by_table(256 * 8)
    monkeypatch.setattr(deepsets, "VALUE_TABLE_MAX", 100)
    queue.algo.double_q = False
    assert not queue._target_by_table(256 * 8) and not queue.target_net.value_table_fits(4)
    with pytest.raises(ValueError, match="VALUE_TABLE_MAX"):
        queue.target_net.frozen_values(4)
