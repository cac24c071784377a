"""DeepSets SUBSAMPLE-MFQ (sqtorch/neural/mfq.py, docs/model.md §7.9): the exact enumeration of the other
agents' actions is the mean-field backup, and the trained network reproduces the exact tabular Q_k and
its executed policy (the math of §7.3, computed by the tabular solver independently)."""

from __future__ import annotations

import itertools

import pytest
import torch

from sqtorch import metrics as M
from sqtorch.envs import build_env
from sqtorch.experiment import ConfigError, run, validate_config
from sqtorch.neural.deepsets import DeepSetsQ, NetConfig
from sqtorch.neural.mfq import mfq_policy_from_checkpoint, q_all_tables
from sqtorch.tabular.counts import all_counts, rank
from sqtorch.tabular.mfq import greedy_pair_backup, learn_mfq, pair_env, pair_index
from sqtorch.tabular.mfq_policy import MFQPolicy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_enumerated_max_is_the_max_over_consistent_action_assignments() -> None:
    """V(g, c) = max over a_g and over every assignment of actions to agents with state counts c, by brute
    force over the k agents' actions (ev_charging, k = 3), for a random network."""
    env, k = build_env("ev_charging"), 3
    torch.manual_seed(0)
    net = DeepSetsQ.for_env(pair_env(env), NetConfig(hidden=8, embed_dim=2)).double()
    q = q_all_tables(net, k, env.L, env.Al)  # [G, A, NZ]
    V = greedy_pair_backup(pair_index(k, env.L, env.Al))(q)  # [G, NZ]
    Z = all_counts(k, env.L * env.Al)
    for c in all_counts(k, env.L).tolist():
        states = [x for x, cx in enumerate(c) for _ in range(cx)]
        best = torch.full((env.G,), -torch.inf, dtype=torch.float64)
        for acts in itertools.product(range(env.Al), repeat=k):  # every joint action of the k agents
            z = torch.zeros(env.L * env.Al, dtype=torch.int64)
            for x, a in zip(states, acts, strict=True):
                z[x * env.Al + a] += 1
            best = torch.maximum(best, q[:, :, int(rank(z[None])[0])].amax(1))
        z_rep = torch.zeros(env.L, env.Al, dtype=torch.int64)
        z_rep[:, 0] = torch.tensor(c)
        torch.testing.assert_close(V[:, int(rank(z_rep.reshape(1, -1))[0])], best)
    assert Z.shape[0] == q.shape[2]


@pytest.mark.slow
def test_trained_network_reproduces_the_exact_tabular_policy(make_cfg, tmp_path) -> None:
    """ev_charging, n = 4, k = 2: after 1500 steps the network's Q is within 5% (of max|Q_k|) of the exact
    Q_k of tabular SUBSAMPLE-MFQ, its greedy tables agree at >= 95% of (s_g, c), and its exact gap is
    within 0.02 of the tabular policy's."""
    metrics = run(make_cfg("env=ev_charging", "algo=deepsets_mfq", "n=4", "k=2", "algo.max_steps=1500",
                           "eval.every=1500", "eval.num_initial=8", "eval.rollouts=8", "logger=none",
                           "callbacks=none", "trainer=cpu", "trainer.enable_progress_bar=false"))
    env = build_env("ev_charging")
    table = learn_mfq(env, 2, "exact").table
    policy = mfq_policy_from_checkpoint(tmp_path / "checkpoints" / "final.ckpt")
    from sqtorch.neural.checkpoint import load_checkpoint
    from sqtorch.neural.policy import net_from_checkpoint

    net = net_from_checkpoint(load_checkpoint(tmp_path / "checkpoints" / "final.ckpt"), pair_env(env))
    q_net = q_all_tables(net, 2, env.L, env.Al).double()
    assert ((q_net - table.q).abs().max() / table.q.abs().max()).item() < 0.05
    exact = MFQPolicy.from_table(table)
    assert (policy.greedy_g == exact.greedy_g).double().mean().item() >= 0.95
    assert (policy.greedy_l == exact.greedy_l).double().mean().item() >= 0.95
    from sqtorch.evaluation.reference import ValidationConfig, mfq_validation_metrics

    cfg = ValidationConfig(num_initial=8, rollouts=8)
    gap_tab = mfq_validation_metrics(env, exact, 4, cfg)[M.EVAL_GAP]
    assert abs(metrics[M.EVAL_GAP] - gap_tab) <= 0.02


@pytest.mark.slow
def test_a_deepsets_mfq_run_resumes_bit_for_bit(make_cfg, tmp_path) -> None:
    from lightning.pytorch import Callback

    class Kill(Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == 27:
                raise RuntimeError("killed")

    common = ("env=ev_charging", "algo=deepsets_mfq", "n=4", "k=2", "debug=fast", "logger=none", "seed=3")
    full = run(make_cfg(*common, out=tmp_path / "full"))
    with pytest.raises(RuntimeError, match="killed"):
        run(make_cfg(*common, out=tmp_path / "killed"), extra_callbacks=[Kill()])
    resumed = run(make_cfg(*common, f"ckpt_path='{tmp_path / 'killed' / 'checkpoints' / 'step-20.ckpt'}'",
                           out=tmp_path / "killed"))
    assert resumed[M.EVAL_RETURN] == full[M.EVAL_RETURN]
    a = torch.load(tmp_path / "full/checkpoints/final.ckpt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "killed/checkpoints/final.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (("env=queue", "algo=deepsets_mfq"), r"'deepsets_mfq' does not fit env 'queue'"),
        (("env=ev_charging", "algo=deepsets_mfq", "algo.data.state_dist=visited"), r"not supported by deepsets_mfq"),
        (("env=formation", "algo=deepsets_mfq", "k=14", "algo.max_tables=1000"), r"more than algo.max_tables"),
        (("env=ev_charging", "algo=deepsets"), r"'deepsets' does not fit env 'ev_charging'"),
    ],
)
def test_bad_deepsets_mfq_runs_are_refused_in_one_line(make_cfg, tmp_path, overrides, match) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        validate_config(make_cfg(*overrides, out=tmp_path / "run"))
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()
