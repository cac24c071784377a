"""Quickstart: learn SUBSAMPLE-Q tables on the queueing env and compare them with the exact optimum.

    python examples/quickstart.py
"""

from sqtorch.envs import make_env
from sqtorch.tabular import learn, optimal_q

env = make_env("queue")  # docs/model.md §4.2 defaults: 4 service levels, queues of length 0..4
n = 10
q_star = optimal_q(env, n)  # exact optimum of the n-agent problem (lumped count MDP)
v_star = q_star.q.amax(-1)  # [G, count vectors of n agents]
print(f"exact V*: {v_star.numel()} lumped states, mean V* = {v_star.mean():.4f}")
for k in (1, 2, 4, 8):
    result = learn(env, k, m=20, seed=0)  # m-sample empirical Bellman operator, to tolerance
    agree = (result.qtable.greedy() == optimal_q(env, k).greedy()).double().mean()
    print(
        f"k={k}: {result.table_entries:>6} entries, {result.iterations} iterations, "
        f"{result.build_seconds + result.learn_seconds:.2f} s, greedy agreement with exact Q_k: {agree:.1%}"
    )
