"""Choose the `demand_response` constants by exact computation (docs/model.md §4.1); prints a table.

For each (alpha, beta, rho), at n = 3 with exact values (no sampling noise):
- how many global states s_g have an optimal action that depends on the local count vector,
- the exact optimality gap V* - V^{pi_k} of the subsampled policy at k = 1 and k = 2
  (pi_k greedy in the exact Q_k), averaged over 64 uniform initial states.

    PYTHONPATH=. python tools/dr_constants.py   # the table in docs/results.md#demand-response-constants
"""

from __future__ import annotations

from sqtorch.envs import demand_response
from sqtorch.evaluation.exact import policy_value, value_at
from sqtorch.evaluation.execution import initial_states
from sqtorch.tabular import count_kernel, optimal_q

N_AGENTS = 3
GRID = [(15.0, 1.0, 0.5)] + [(alpha, 0.1, rho) for alpha in (0.0, 2.0, 5.0) for rho in (0.5, 1.0, 2.0, 3.0)]


def row(alpha: float, beta: float, rho: float) -> dict:
    env = demand_response(alpha=alpha, beta=beta, rho=rho)
    kernel = count_kernel(env, N_AGENTS)
    q_star = optimal_q(env, N_AGENTS, kernel=kernel).q  # [G, N_n, A]
    greedy = q_star.argmax(-1)
    dependent = int((greedy != greedy[:, :1]).any(-1).sum())  # s_g whose argmax varies with C
    s0 = initial_states(env, N_AGENTS, 64, seed=0)
    v_star = value_at(q_star.amax(-1), *s0, L=env.L).mean()
    gaps = {}
    for k in (1, 2):
        v_pi = policy_value(env, N_AGENTS, optimal_q(env, k).greedy(), k, kernel=kernel)
        gaps[k] = float(v_star - value_at(v_pi, *s0, L=env.L).mean())
    return dict(alpha=alpha, beta=beta, rho=rho, dependent=dependent, gap1=gaps[1], gap2=gaps[2])


def main() -> None:
    print(f"demand response, n = {N_AGENTS}, exact values\n")
    print("| alpha | beta | rho | s_g with count-dependent optimal action | gap k=1 | gap k=2 |")
    print("|---|---|---|---|---|---|")
    for alpha, beta, rho in GRID:
        r = row(alpha, beta, rho)
        print(f"| {alpha:g} | {beta:g} | {rho:g} | {r['dependent']} / 5 | {r['gap1']:.4f} | {r['gap2']:.4f} |")


if __name__ == "__main__":
    main()
