"""LightningModule for neural SUBSAMPLE-Q: fitted-Q / DQN on sampled Bellman targets (SPEC §3).

Each optimizer step draws a :class:`~sqtorch.neural.data.Batch` of ``(s_g, s_Delta, a_g)`` with
``m`` successors per item from the env kernels and regresses ``Q_theta(s_g, s_Delta, a_g)`` on

    y = r_Delta(s_g, s_Delta, a_g) + gamma * (1/m) sum_j max_a' Q_target(g'_j, c'_j, a')

the sampled version of the Bellman operator of SPEC §2, with a target network synced every
``target_sync`` steps (or Polyak-averaged with ``tau``), Huber or MSE loss, Adam and gradient
clipping (the Trainer's ``gradient_clip_val``). ``save_hyperparameters()`` stores everything needed
to rebuild the network, so ``SubsampleQModule.load_from_checkpoint(path)`` needs no other input.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from sqtorch.config import build_env
from sqtorch.neural import metrics as M
from sqtorch.neural.data import GenerativeSource, StepDataset
from sqtorch.neural.deepsets import DeepSetsQ
from sqtorch.neural.policy import DeepSetsPolicy
from sqtorch.neural.validation import Reference, build_reference, validation_metrics
from sqtorch.tabular.counts import counts_of

DEFAULT_DATA = dict(
    state_dist="visited", uniform_frac=0.5, pool_size=256, epsilon=0.1, reset_prob=0.02
)
DEFAULT_EVAL = dict(
    num_initial=16, rollouts=32, horizon=None, seed=12345, reference="auto", max_states=20_000
)


def q_scale_of(env: Any) -> float:
    """``max |r| / (1 - gamma)``: the size of any Q value, used to keep network outputs O(1)."""
    r_max = float(env.r_g.abs().max() + env.r_l.abs().max())
    return max(r_max, 1e-6) / (1.0 - env.gamma)


class SubsampleQModule(pl.LightningModule):
    """DeepSets Q-learning from a generative model (SPEC §3); args mirror conf/algo/deepsets."""

    def __init__(
        self,
        env: dict,
        n: int,
        k: int,
        net: dict | None = None,
        m: int = 8,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_schedule: str = "constant",
        max_steps: int = 5000,
        loss: str = "huber",
        huber_delta: float = 1.0,
        target_sync: int = 100,
        tau: float | None = None,
        data: dict | None = None,
        eval: dict | None = None,  # noqa: A002 - config key
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.env = build_env(env)
        net_kw = dict(net or {})
        self.net = DeepSetsQ(
            self.env.G, self.env.L, self.env.A, q_scale=q_scale_of(self.env), **net_kw
        )
        self.target_net = copy.deepcopy(self.net).requires_grad_(False)
        self.data_cfg = {**DEFAULT_DATA, **(data or {})}
        self.eval_cfg = {**DEFAULT_EVAL, **(eval or {})}
        self.source: GenerativeSource | None = None
        self.reference: Reference | None = None
        self.samples = 0
        self._pending_source_state: dict | None = None
        self._last_step_time: float | None = None

    # ---- setup / data --------------------------------------------------------------------
    def _run_device(self) -> torch.device:
        trainer = self._trainer
        return trainer.strategy.root_device if trainer is not None else self.device

    def setup(self, stage: str) -> None:
        """Build the sampler on the device the strategy will use (before checkpoint restore)."""
        if self.source is None:
            env = self.env.to(self._run_device())
            h, d = self.hparams, self.data_cfg
            self.source = GenerativeSource(
                env,
                h.n,
                h.k,
                h.m,
                d["state_dist"],
                d["uniform_frac"],
                d["pool_size"],
                d["epsilon"],
                d["reset_prob"],
                seed=h.seed,
            )
        if self._pending_source_state is not None:
            self.source.load_state_dict(self._pending_source_state)
            self._pending_source_state = None

    def train_dataloader(self) -> DataLoader:
        return DataLoader(StepDataset(), batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader([0], batch_size=None, num_workers=0)

    # ---- learning ------------------------------------------------------------------------
    def q_values(self, net: nn.Module, s_g: Tensor, c: Tensor) -> Tensor:
        return net.forward_counts(s_g, c)

    def _greedy_fn(self, s_g: Tensor, s_sub: Tensor) -> Tensor:
        return self.net.forward_counts(s_g, counts_of(s_sub, self.env.L)).argmax(-1)

    def td_target(self, r: Tensor, g_next: Tensor, c_next: Tensor) -> Tensor:
        """``r + gamma * mean_j max_a' Q_target(g'_j, c'_j, a')`` for ``g_next [B, m]``."""
        B, m = g_next.shape
        with torch.no_grad():
            q_next = self.target_net.forward_counts(g_next.reshape(-1), c_next.reshape(B * m, -1))
            v_next = q_next.max(-1).values.reshape(B, m).mean(1)
        return r.to(v_next.dtype) + self.env.gamma * v_next

    def _loss(self, pred: Tensor, target: Tensor) -> Tensor:
        if self.hparams.loss == "mse":
            return nn.functional.mse_loss(pred, target)
        # Huber on the O(1) scale of the network output, so huber_delta does not depend on rewards
        s = self.net.q_scale
        return (
            nn.functional.huber_loss(pred / s, target / s, delta=self.hparams.huber_delta) * s * s
        )

    def training_step(self, step_idx: Any, batch_idx: int) -> Tensor:
        assert self.source is not None
        now = time.perf_counter()
        h = self.hparams
        self.update_target()
        policy = self._greedy_fn if self.source.state_dist == "visited" else None
        b = self.source.sample(h.batch_size, policy)
        q = self.net.forward_counts(b.s_g, counts_of(b.s_sub, self.env.L))
        pred = q.gather(1, b.a_g[:, None])[:, 0]
        target = self.td_target(b.r, b.g_next, b.c_next)
        loss = self._loss(pred, target)
        self.samples += h.batch_size
        self.log(M.TRAIN_TD_LOSS, loss, prog_bar=True)
        self.log(M.TRAIN_Q_MEAN, q.mean())
        self.log(M.TRAIN_TARGET_MEAN, target.mean())
        self.log(M.TRAIN_SAMPLES, float(self.samples))
        self.log(M.LEARNING_RATE, self.optimizers().param_groups[0]["lr"])
        if self._last_step_time is not None:
            self.log(M.SAMPLES_PER_SECOND, h.batch_size / max(now - self._last_step_time, 1e-9))
        self._last_step_time = now
        return loss

    def update_target(self) -> None:
        """Target update before step t: Polyak with ``tau``, else a copy when t % target_sync == 0.

        Done at the start of ``training_step`` (not in ``on_train_batch_end``, which runs after
        the checkpoint callback) so a checkpoint never misses a pending sync.
        """
        h = self.hparams
        if h.tau is not None:
            with torch.no_grad():
                for p_t, p in zip(self.target_net.parameters(), self.net.parameters(), strict=True):
                    p_t.lerp_(p, float(h.tau))
        elif self.global_step % h.target_sync == 0:
            self.target_net.load_state_dict(self.net.state_dict())

    def configure_optimizers(self) -> Any:
        h = self.hparams
        opt = torch.optim.Adam(self.net.parameters(), lr=h.lr, weight_decay=h.weight_decay)
        if h.lr_schedule == "constant":
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(h.max_steps, 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- validation ----------------------------------------------------------------------
    def eval_kwargs(self) -> dict:
        e = self.eval_cfg
        return dict(
            num_initial=e["num_initial"],
            rollouts=e["rollouts"],
            horizon=e["horizon"],
            seed=e["seed"],
            device=self._run_device(),
        )

    def ensure_reference(self) -> Reference:
        """Exact tabular Q at k / V* at n when available and small (built once)."""
        if self.reference is None:
            env = self.env.to(self._run_device())
            self.reference = build_reference(
                env,
                self.hparams.n,
                self.hparams.k,
                mode=self.eval_cfg["reference"],
                max_states=self.eval_cfg["max_states"],
                eval_kwargs=self.eval_kwargs(),
            )
        return self.reference

    def evaluate(self) -> dict[str, float]:
        """``eval/*`` metrics of the current greedy subsampled policy on the n-agent system."""
        env = self.env.to(self._run_device())
        policy = DeepSetsPolicy(self.net, self.hparams.k)
        return validation_metrics(
            env, policy, self.hparams.n, self.ensure_reference(), self.eval_kwargs()
        )

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log_dict(self.evaluate(), batch_size=1)

    # ---- checkpoint ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Custom counters and the sampler's generator / visited pool, so resume is exact."""
        checkpoint["sqtorch"] = {
            "samples": self.samples,
            "source": None if self.source is None else self.source.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("sqtorch") or {}
        self.samples = int(state.get("samples", 0))
        if state.get("source") is not None:
            if self.source is not None:
                self.source.load_state_dict(state["source"])
            else:
                self._pending_source_state = state["source"]
