"""LightningModule for neural SUBSAMPLE-Q: fitted-Q / DQN on sampled Bellman targets (docs/model.md §3).

Each optimizer step draws a :class:`~sqtorch.neural.data.Batch` of ``(s_g, s_Delta, a_g)`` with
``m`` successors per item from the env kernels and regresses ``Q_theta(s_g, s_Delta, a_g)`` on

    y = r_Delta(s_g, s_Delta, a_g) + gamma * (1/m) sum_j max_a' Q_target(g'_j, c'_j, a')

the sampled version of the Bellman operator of docs/model.md §2, with a target network synced every
``target_sync`` steps (or Polyak-averaged with ``tau``), Huber or MSE loss, Adam and gradient
clipping at ``algo.optim.grad_clip`` (manual optimization: the Trainer's ``gradient_clip_val``
must stay unset). The hyper-parameters (env config, n, k, the
:class:`~sqtorch.neural.config.DeepSetsConfig` and the :class:`~sqtorch.evaluation.reference.
ValidationConfig` as plain dicts) are stored in every checkpoint, so
``SubsampleQModule.load_from_checkpoint(path)`` needs no other input, and
:meth:`sqtorch.neural.policy.DeepSetsPolicy.from_checkpoint` rebuilds the network without this module.
"""

from __future__ import annotations

import copy
import inspect
import operator
import time
import warnings
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn
from torch.optim.optimizer import _global_optimizer_post_hooks as _global_post_hooks
from torch.optim.optimizer import _global_optimizer_pre_hooks as _global_pre_hooks
from torch.utils.data import DataLoader

from sqtorch import metrics as M
from sqtorch.checks import check_int, check_k
from sqtorch.envs import build_env
from sqtorch.envs.base import GlobalLocalMDP
from sqtorch.evaluation.reference import Reference, ValidationConfig, build_reference, validation_metrics
from sqtorch.neural.config import DeepSetsConfig
from sqtorch.neural.data import GenerativeSource, StepDataset
from sqtorch.neural.deepsets import DeepSetsQ, count_vectors
from sqtorch.neural.policy import DeepSetsPolicy
from sqtorch.neural.progress import StepProgressBar
from sqtorch.neural.sim_data import SimulatorSource
from sqtorch.runtime import derive_seed, no_autograd_dispatch, no_deterministic_fill
from sqtorch.tabular.counts import num_counts


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> None:
    """Scale the gradients by ``min(1, max_norm / (||g||_2 + 1e-6))``, ``||g||`` over all of them.

    The rule of ``torch.nn.utils.clip_grad_norm_`` (what the Trainer's ``gradient_clip_val``
    applies) in three multi-tensor ops, with no host read.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp_(max=1.0))


def _fused_adam_lists(optimizer: torch.optim.Optimizer) -> tuple[list[Tensor], ...] | None:
    """The tensor lists of :func:`adam_step`'s direct call, or ``None`` where it must not be made."""
    if not hasattr(torch, "_fused_adam_") or type(optimizer) is not torch.optim.Adam:
        return None
    if len(optimizer.param_groups) != 1:
        return None
    group = optimizer.param_groups[0]
    flags = ("amsgrad", "maximize", "capturable", "differentiable", "decoupled_weight_decay")
    if not group.get("fused") or any(group.get(f) for f in flags) or not isinstance(group["lr"], float):
        return None
    if (optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks or _global_pre_hooks
            or _global_post_hooks or getattr(optimizer, "grad_scale", None) is not None
            or getattr(optimizer, "found_inf", None) is not None):
        return None
    params: list[Tensor] = group["params"]
    if not params:
        return None
    device, dtype = params[0].device, params[0].dtype
    grads, exp_avgs, exp_avg_sqs, steps = [], [], [], []
    for p in params:
        state = optimizer.state.get(p)
        if p.grad is None or not state or p.device != device or p.dtype != dtype:
            return None  # no state yet (the first step), a frozen parameter, mixed devices: Adam.step
        grads.append(p.grad)
        exp_avgs.append(state["exp_avg"])
        exp_avg_sqs.append(state["exp_avg_sq"])
        steps.append(state["step"])
    return params, grads, exp_avgs, exp_avg_sqs, steps


def _shared_steps(optimizer: torch.optim.Optimizer, params: list[Tensor], steps: list[Tensor]) -> Tensor:
    """One tensor ``[P]`` whose elements are Adam's per-parameter ``step`` counts (float32 scalars).

    The first call copies the counts into it and puts its element views into Adam's state in their
    place, so one ``add_`` on it advances every count (``_foreach_add_`` on the CPU is one ``add_``
    per parameter). Later calls find the views still in the state and return it; where the state holds
    other tensors (``load_state_dict`` replaced them) it is built again from them. The counts' values,
    and so the update and a checkpoint's state, are the same.
    """
    cached: tuple[Tensor, list[Tensor]] | None = getattr(optimizer, "_sqtorch_steps", None)
    if cached is not None and len(cached[1]) == len(steps) and all(map(operator.is_, cached[1], steps)):
        return cached[0]
    shared = torch.stack(steps)
    steps[:] = shared.unbind()  # the caller's list (aligned with params) now holds the views too
    for p, view in zip(params, steps, strict=True):
        optimizer.state[p]["step"] = view
    optimizer._sqtorch_steps = (shared, list(steps))  # type: ignore[attr-defined]
    return shared


def adam_step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()``; for a fused Adam with one parameter group, its state and no step hooks,
    the step's own kernel calls made directly.

    ``torch.optim.Adam(fused=True).step()`` spends most of a small network's step in Python
    (grouping tensors, reading options) before it adds 1 to every ``step`` and calls
    ``torch._fused_adam_``. Those two calls, with the group's ``lr``, ``betas``, ``eps`` and
    ``weight_decay``, give the same parameters and state bit for bit (tested). Anything else, including
    the first step (Adam creates its state there), goes through ``optimizer.step()``.
    """
    lists = _fused_adam_lists(optimizer)
    if lists is None:
        optimizer.step()
        return
    params, grads, exp_avgs, exp_avg_sqs, steps = lists
    group = optimizer.param_groups[0]
    beta1, beta2 = group["betas"]
    _shared_steps(optimizer, params, steps).add_(1)  # every parameter's step count + 1, in one op
    torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],  # type: ignore[attr-defined]
                       beta1=float(beta1), beta2=float(beta2), weight_decay=group["weight_decay"], eps=group["eps"],
                       maximize=False, grad_scale=None, found_inf=None)
    optimizer._opt_called = True  # type: ignore[attr-defined]  # what the LR scheduler's step() checks, as after step()


# the hooks that Lightning's manual_backward and LightningOptimizer.step dispatch around the update
UPDATE_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


def direct_update_ok(trainer: pl.Trainer, module: pl.LightningModule, optimizer: Any) -> bool:
    """Whether ``module``'s manual update may call ``loss.backward()`` and the torch optimizer directly.

    Lightning's ``manual_backward`` and ``LightningOptimizer.step`` route through the strategy and
    its precision plugin and dispatch :data:`UPDATE_HOOKS` to every callback and to the module. With
    full precision (``32-true``) on one device, the pass-through profiler, no ``backward`` override and
    none of those hooks overridden, all of that does nothing but cost time on every step. Any
    other setup (mixed precision, DDP, a profiler, a callback that watches gradients) needs it.
    ``optimizer`` is the ``LightningOptimizer``: the direct path keeps its step counter through the
    loop's ``_on_before_step``/``_on_after_step``, and is refused when a Lightning version lacks them.
    """
    if type(trainer.precision_plugin) is not Precision or type(trainer.strategy) is not SingleDeviceStrategy:
        return False
    if not isinstance(trainer.profiler, PassThroughProfiler):
        return False
    if any(is_overridden(hook, module, pl.LightningModule) for hook in (*UPDATE_HOOKS, "backward")):
        return False
    if any(is_overridden(hook, cb, pl.Callback) for cb in trainer.callbacks for hook in UPDATE_HOOKS):
        return False
    hooks_kept = all(callable(getattr(optimizer, name, None)) for name in ("_on_before_step", "_on_after_step"))
    return hooks_kept and isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer)


# Lightning warns that a checkpoint of a manually optimized module holds the weights after the
# step's update: ours are meant to (as under automatic optimization); a resume continues from there.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization", category=UserWarning)


def _steps_as_manual(checkpoint: dict) -> None:
    """A checkpoint written under automatic optimization counts its optimizer steps there; the
    Trainer of this (manual) module reads ``global_step`` from the manual counter, so copy it."""
    loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    auto = loop.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {}).get("step")
    manual = loop.get("epoch_loop.manual_optimization.optim_step_progress")
    if auto and manual and manual["total"]["completed"] == 0 and auto["total"]["completed"] > 0:
        loop["epoch_loop.manual_optimization.optim_step_progress"] = copy.deepcopy(auto)


class SubsampleQModule(pl.LightningModule):
    """DeepSets Q-learning from a generative model (docs/model.md §3).

    ``env`` is an env config (:func:`sqtorch.envs.build_env`), ``algo`` a :class:`DeepSetsConfig`
    (or a dict of its fields), ``eval`` a :class:`ValidationConfig` (or a dict).
    """

    def __init__(
        self,
        env: dict,
        n: int,
        k: int,
        algo: DeepSetsConfig | dict | None = None,
        eval: ValidationConfig | dict | None = None,  # noqa: A002 - config key
        seed: int = 0,
    ) -> None:
        super().__init__()
        cfg_cls = self.config_class
        self.algo = algo if isinstance(algo, cfg_cls) else cfg_cls(**(algo or {}))
        self.eval_cfg = eval if isinstance(eval, ValidationConfig) else ValidationConfig(**(eval or {}))
        k = check_k(k, n)
        hparams = dict(env=dict(env), n=n, k=int(k), algo=asdict(self.algo), eval=asdict(self.eval_cfg))
        self.save_hyperparameters({**hparams, "seed": check_int("seed", seed, 0, "a seed")}, logger=False)
        self.task = build_env(env)  # the system a policy is evaluated on
        self.env = self.learning_env(self.task)  # the one the network and the sampler see
        self.net = DeepSetsQ.for_env(self.env, self.algo.net)
        self.target_net = copy.deepcopy(self.net).requires_grad_(False)
        self.source: GenerativeSource | SimulatorSource | None = None
        self.reference: Reference | None = None
        self.samples = 0
        self._pending_source_state: dict | None = None
        self._last_log: tuple[float, int] | None = None
        self._params = list(self.net.parameters())
        self._direct: bool | None = None  # direct_update_ok, decided at the first step of each fit
        self.automatic_optimization = False  # training_step runs the whole update (fewer, larger ops)

    config_class: type = DeepSetsConfig

    # set on every batch (Lightning's current hook name, around each of its ~10 hook calls per step, and the
    # sample counter): plain values that are never a parameter, buffer or submodule, so they skip
    # nn.Module.__setattr__'s registration checks
    _PLAIN_ATTRS = frozenset({"_current_fx_name", "samples"})

    def __setattr__(self, name: str, value: Any) -> None:
        if name in SubsampleQModule._PLAIN_ATTRS:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def learning_env(self, task: Any) -> Any:
        """The env the network and the sampler see: ``task`` itself (a subclass may transform it)."""
        return task

    # ---- setup / data --------------------------------------------------------------------
    def _run_device(self) -> torch.device:
        trainer = self._trainer
        return trainer.strategy.root_device if trainer is not None else self.device

    def setup(self, stage: str) -> None:
        """Build the sampler on the device the strategy will use (before checkpoint restore)."""
        if self.source is None:
            h, env = self.hparams, self.env.to(self._run_device())
            rank = self._trainer.global_rank if self._trainer is not None else 0
            seed = h.seed if rank == 0 else derive_seed(h.seed, rank)  # DDP: each rank its own batches
            tensors = isinstance(env, GlobalLocalMDP) and self.algo.data.state_dist != "trajectory"
            source = GenerativeSource if tensors else SimulatorSource  # a simulator: through its protocol methods
            self.source = source(env, h.n, h.k, self.algo.m, self.algo.data, seed)
        if self._target_by_table(self.algo.batch_size * self.algo.m):  # its count vectors, before any step
            count_vectors(int(self.hparams.k), self.target_net.L, self._run_device())
        if self._pending_source_state is not None:
            self.source.load_state_dict(self._pending_source_state)
            self._pending_source_state = None

    def train_dataloader(self) -> StepDataset:
        """The step indices themselves: Lightning takes any iterable, and a ``DataLoader`` around
        them costs its fetch machinery on every step."""
        return StepDataset()

    def val_dataloader(self) -> DataLoader:
        return DataLoader([0], batch_size=None, num_workers=0)

    # ---- learning ------------------------------------------------------------------------
    def td_target(self, r: Tensor, g_next: Tensor, c_next: Tensor | None, x_next: Tensor | None = None) -> Tensor:
        """``r + gamma * mean_j max_a' Q_target(g'_j, c'_j, a')`` for ``g_next [B, m]``.

        The successors are count vectors ``c_next [B, m, L]`` or continuous states ``x_next [B, m, k, d]``.
        With ``algo.double_q`` (double Q-learning) the action is the online network's greedy one and
        the target network values it: ``Q_target(g'_j, c'_j, argmax_a' Q_theta(g'_j, c'_j, a'))``
        (ties: lowest index), at the cost of one more forward pass over the ``B * m`` successors.
        Without it, ``max_a' Q_target`` at count vectors is read from the target network's value table
        where that pays (:meth:`_target_by_table`; the same values as the forward pass).
        """
        B, m = g_next.shape
        with torch.no_grad():
            if c_next is not None and self._target_by_table(B * m):
                V, w = self.target_net.frozen_values(int(self.hparams.k))  # the same values as the forward pass
                code = g_next * (len(V) // self.target_net.G) + (c_next * w).sum(-1)  # [B, m]
                v_next = V.index_select(0, code.reshape(-1)).reshape(B, m).mean(1)
                return r.to(v_next.dtype) + self.env.gamma * v_next
            if c_next is not None:
                args: tuple[Tensor, Tensor] = (g_next.reshape(-1), c_next.reshape(B * m, -1))
                # the target network changes only at a sync: its first-layer table is computed once per sync
                frozen = self.target_net.frozen_hidden_table() if self.target_net.pooling != "max" else None
                q_next = self.target_net.forward_counts(*args, frozen)
                q_online = self.net.forward_counts(*args) if self.algo.double_q else None
            else:
                assert x_next is not None
                args = (g_next.reshape(-1), x_next.reshape(B * m, *x_next.shape[2:]))
                q_next = self.target_net(*args)
                q_online = self.net(*args) if self.algo.double_q else None
            if q_online is None:
                v = q_next.max(-1).values
            else:
                v = q_next.gather(-1, q_online.argmax(-1, keepdim=True))[:, 0]
            v_next = v.reshape(B, m).mean(1)
        return r.to(v_next.dtype) + self.env.gamma * v_next

    def _target_by_table(self, rows: int) -> bool:
        """Whether :meth:`td_target` reads ``max_a' Q_target`` from the target's value table
        (:meth:`DeepSetsQ.frozen_values`, built once per target update) instead of a forward pass over
        its ``rows = B * m`` successors: without double Q-learning, when the table fits and costs at most
        half the forward passes it replaces until the next update (``target_sync`` steps; one with ``tau``)."""
        net, k = self.target_net, int(self.hparams.k)
        if self.algo.double_q or not net.value_table_fits(k):
            return False
        steps = 1 if self.algo.tau is not None else self.algo.target_sync
        return 2 * net.G * num_counts(k, net.L) <= rows * steps

    def _loss(self, pred: Tensor, target: Tensor) -> Tensor:
        if self.algo.loss == "mse":
            return nn.functional.mse_loss(pred, target)
        # Huber on the O(1) scale of the network output, so huber_delta does not depend on rewards
        s = self.net.q_scale
        return nn.functional.huber_loss(pred / s, target / s, delta=self.algo.huber_delta) * s * s

    def td_loss(self) -> tuple[Tensor, Tensor, Tensor]:
        """The regression of one step: ``(loss, Q [B, A], target [B])`` on a fresh batch of ``algo.batch_size``.

        Syncs the target network when due (:meth:`update_target`), draws the batch (the ``visited``
        pool first moves one step with the current greedy policy) and evaluates the TD loss; the
        update itself is :meth:`training_step`'s.
        """
        assert self.source is not None
        batch_size = self.algo.batch_size
        self.update_target()
        # the weights do not change before the update: one table serves the pool's greedy policy
        # (detached) and the regression (mean and sum pooling)
        table = self.net.hidden_table() if self.net.finite and self.net.pooling != "max" else None
        policy = None
        if self.source.state_dist in ("visited", "trajectory"):
            frozen = None if table is None else table.detach()

            def policy(s_g: Tensor, s_sub: Tensor) -> Tensor:
                return self.net.q_states(s_g, s_sub, frozen).argmax(-1)

        b = self.source.sample(batch_size, policy)
        q = self.net.q_states(b.s_g, b.s_sub, table)
        pred = q.gather(1, b.a_g[:, None])[:, 0]
        with no_autograd_dispatch():  # no gradient flows through the target (sqtorch.runtime)
            target = self.td_target(b.r, b.g_next, b.c_next, b.x_next)
        loss = self._loss(pred, target)
        self.samples += batch_size
        return loss, q, target

    def training_step(self, step_idx: Any, batch_idx: int) -> Tensor:
        """One fitted-Q step on a fresh batch (drawn here, see :mod:`sqtorch.neural.data`).

        Manual optimization: zero the gradients, backward, clip the global gradient norm at
        ``algo.optim.grad_clip``, one fused Adam step, one scheduler step; through Lightning's
        ``manual_backward`` and ``LightningOptimizer`` unless :func:`direct_update_ok` (the same
        arithmetic without the hook dispatch). Nothing in it reads a tensor on the host (no stream
        sync on CUDA); logging reads on logging steps only. Under ``trainer.deterministic=true`` the step
        runs without torch's fill of new memory (:func:`sqtorch.runtime.no_deterministic_fill`: the
        same values, ~150 fewer fills per step).
        """
        with no_deterministic_fill():  # the step reads no uninitialized memory: skip the fill
            loss, q, target = self.td_loss()
            if self._logging_step():
                self._log_step(loss, q, target)
            opt = self.optimizers()
            if self._direct is None:
                self._direct = self._trainer is not None and direct_update_ok(self._trainer, self, opt)
            if self._direct:  # the same update without Lightning's hook dispatch
                for group in opt.optimizer.param_groups:  # type: ignore[union-attr]  # zero_grad(set_to_none=True)
                    for p in group["params"]:
                        p.grad = None
                loss.backward()
                self._clip_grad_norm()
                opt._on_before_step()  # type: ignore[union-attr]  # Lightning's step counter (and its profiler)
                adam_step(opt.optimizer)  # type: ignore[union-attr]
                opt._on_after_step()  # type: ignore[union-attr]
            else:
                opt.zero_grad(set_to_none=True)
                self.manual_backward(loss)
                self._clip_grad_norm()
                opt.step()
            sched = self.lr_schedulers()
            if sched is not None:
                sched.step()  # type: ignore[union-attr]
            return loss.detach()

    # Lightning reads training_step's signature on every batch (is batch_idx a parameter?): compute it once
    training_step.__signature__ = inspect.signature(training_step)  # type: ignore[attr-defined]

    def _clip_grad_norm(self) -> None:
        if self.algo.optim.grad_clip is not None:
            clip_grad_norm(self._params, float(self.algo.optim.grad_clip))

    def _logging_step(self) -> bool:
        """True on the steps the logger writes (``log_every_n_steps``); logging is not free."""
        trainer = self._trainer
        every = trainer.log_every_n_steps if trainer is not None else 1
        return every > 0 and (self.global_step + 1) % every == 0

    def _log_step(self, loss: Tensor, q: Tensor, target: Tensor) -> None:
        """Write the ``train/*`` and ``charts/*`` scalars at this step (one host read).

        They go to the Trainer's loggers directly (``self.log`` costs milliseconds per call); the
        TD loss also goes to the progress bar when there is one: into ``bar_metrics`` for a
        :class:`~sqtorch.neural.progress.StepProgressBar`, through ``self.log`` for any other bar.
        """
        now = time.perf_counter()
        stats = torch.stack([loss.detach(), q.detach().mean(), target.detach().mean()]).tolist()
        values = dict(zip((M.TRAIN_TD_LOSS, M.TRAIN_Q_MEAN, M.TRAIN_TARGET_MEAN), stats, strict=True))
        values[M.TRAIN_SAMPLES] = float(self.samples)
        values[M.LEARNING_RATE] = float(self.optimizers().param_groups[0]["lr"])
        if self._last_log is not None:  # averaged since the previous logging step
            t, samples = self._last_log
            values[M.SAMPLES_PER_SECOND] = (self.samples - samples) / max(now - t, 1e-9)
        self._last_log = (now, self.samples)
        for logger in self.loggers:
            logger.log_metrics(values, step=self.global_step)
        bar = self._trainer.progress_bar_callback if self._trainer is not None else None
        if isinstance(bar, StepProgressBar):  # read by the bar when it refreshes (sqtorch/neural/progress.py)
            self.bar_metrics = {M.TRAIN_TD_LOSS: values[M.TRAIN_TD_LOSS]}
        elif bar is not None:  # another progress bar reads Lightning's progress-bar metrics
            self.log(M.TRAIN_TD_LOSS, values[M.TRAIN_TD_LOSS], prog_bar=True, logger=False)

    def update_target(self) -> bool:
        """Target update before step t: Polyak with ``tau``, else a copy when t % target_sync == 0.
        Returns whether the target network changed.

        Done at the start of ``training_step`` (not in ``on_train_batch_end``, which runs after
        the checkpoint callback) so a checkpoint never misses a pending sync.
        """
        a = self.algo
        if a.tau is not None:
            with torch.no_grad():
                for p_t, p in zip(self.target_net.parameters(), self.net.parameters(), strict=True):
                    p_t.lerp_(p, float(a.tau))
            return True
        if self.global_step % a.target_sync == 0:
            self.target_net.load_state_dict(self.net.state_dict())
            return True
        return False

    def configure_optimizers(self) -> Any:
        o = self.algo.optim
        try:  # one fused kernel for all parameters
            opt = torch.optim.Adam(self._params, lr=o.lr, weight_decay=o.weight_decay, fused=True)
        except RuntimeError:  # torch < 2.4 has no fused Adam on the CPU
            opt = torch.optim.Adam(self._params, lr=o.lr, weight_decay=o.weight_decay, foreach=True)
        if o.lr_schedule == "constant":
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.algo.max_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- validation ----------------------------------------------------------------------
    def ensure_reference(self) -> Reference:
        """Exact tabular Q at k / V* at n when tractable (built once, on the run's device)."""
        if self.reference is None:
            env = self.env.to(self._run_device())
            self.reference = build_reference(env, self.hparams.n, self.hparams.k, self.eval_cfg)
        return self.reference

    def evaluate(self, reuse: bool = True) -> dict[str, float]:
        """``eval/*`` metrics of the current greedy subsampled policy on the n-agent system (:meth:`eval_metrics`).

        They are a function of the weights alone (fixed evaluation seeds: common random numbers), the
        run's device and ``eval_cfg``. With ``reuse`` they are kept per device and ``eval_cfg`` with a
        copy of the weights (:meth:`DeepSetsQ.frozen` by value: an optimizer step changes no version
        counter) and returned again while the weights are equal to it. So the evaluation after ``fit``
        reuses the last validation's when no step came between them. ``reuse=False`` recomputes.
        """
        if not reuse:
            return self.eval_metrics()
        name = f"eval_metrics {self.eval_cfg!r} {self._run_device()}"
        return dict(self.net.frozen(name, self.eval_metrics, by_value=True))  # a copy: callers add keys

    def eval_metrics(self) -> dict[str, float]:
        """The metrics of :meth:`evaluate`, computed (:func:`~sqtorch.evaluation.reference.validation_metrics`)."""
        env = self.env.to(self._run_device())
        policy = DeepSetsPolicy(self.net, self.hparams.k)
        return validation_metrics(env, policy, self.hparams.n, self.ensure_reference(), self.eval_cfg)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        with no_deterministic_fill():  # reads no uninitialized memory, like the training step
            metrics = self.evaluate()
        self.log_dict(metrics, batch_size=1)

    def on_train_start(self) -> None:
        self._direct = None  # decided again for this fit's trainer and callbacks

    # ---- checkpoint ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Custom counters and the sampler's generator / visited pool, so resume is exact."""
        checkpoint["sqtorch"] = {
            "samples": self.samples,
            "source": None if self.source is None else self.source.state_dict(),
            "device": None if self.source is None else self.source.device.type,  # generator states are per type
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        _steps_as_manual(checkpoint)
        state = checkpoint.get("sqtorch") or {}
        self.samples = int(state.get("samples", 0))
        if state.get("source") is not None:
            if self.source is not None:
                self.source.load_state_dict(state["source"])
            else:
                self._pending_source_state = state["source"]
