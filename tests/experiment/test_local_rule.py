"""algo=tabular_local_rule (docs/model.md §7.8): SUBSAMPLE-Q for the global agent while the local agents
play a fixed rule, executed through the SUBSAMPLE-MFQ evaluators. Checked against two independent exact
computations: the pair-count evaluation of Algorithm 2 and V* of SUBSAMPLE-Q's own count MDP."""

from __future__ import annotations

import json

import pytest
import torch

from sqtorch import metrics as M
from sqtorch.envs.ev_charging import ev_charging
from sqtorch.envs.simulator import make_generator, sample_initial_state
from sqtorch.evaluation.exact import optimal_value, value_at
from sqtorch.evaluation.mfq import policy_value_mfq
from sqtorch.experiment import ConfigError, run, validate_config
from sqtorch.tabular import learn
from sqtorch.tabular.mfq_policy import MFQPolicy

pytestmark = pytest.mark.usefixtures("one_thread")
RULE = [1, 1, 1, 0]  # charge unless full (ev_charging, Q = 3)


def test_the_rule_policy_at_k_equal_n_attains_the_optimum_of_the_rule_mdp() -> None:
    env, n = ev_charging(), 3
    rule = torch.tensor(RULE)
    env_rule = env.with_local_rule(rule)
    s0 = sample_initial_state(env, n, 16, make_generator(1))
    q = learn(env_rule, n, "exact").qtable
    policy = MFQPolicy.with_local_rule(q.greedy(), rule, n, env.Al, env.A)
    v_pi = value_at(policy_value_mfq(env, n, policy), *s0, L=env.L)
    v_rule = value_at(optimal_value(env_rule, n), *s0, L=env.L)
    torch.testing.assert_close(v_pi, v_rule, atol=1e-7, rtol=0)
    # the rule-MDP's kernels: an agent in state x moves as if it played rule[x]
    for x, a in enumerate(RULE):
        assert torch.equal(env_rule.P_l[:, :, x], env.P_l[:, :, a, x])


def test_train_py_runs_it_and_bad_rules_are_refused(make_cfg, tmp_path) -> None:
    metrics = run(make_cfg("env=ev_charging", "algo=tabular_local_rule", f"algo.rule=[{','.join(map(str, RULE))}]",
                           "n=3", "k=2", "logger=none", "eval.num_initial=4", "eval.rollouts=4"))
    assert metrics[M.EVAL_GAP] > 0 and (tmp_path / "qtable.pt").exists()
    assert json.loads((tmp_path / "metrics.json").read_text())[M.EVAL_GAP] == pytest.approx(metrics[M.EVAL_GAP])
    with pytest.raises(ConfigError, match=r"algo.rule has 3 entries; the env has L = 4"):
        validate_config(make_cfg("env=ev_charging", "algo=tabular_local_rule", "algo.rule=[1,1,0]", out=tmp_path / "x"))
    with pytest.raises(ConfigError, match=r"algo.rule\[0\] = 2 is outside"):
        validate_config(make_cfg("env=ev_charging", "algo=tabular_local_rule", "algo.rule=[2]", out=tmp_path / "y"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
