"""Bring your own simulator: an electric-vehicle fleet under a grid signal, written against sqtorch's protocol.

Each of the n vehicles has a battery state of charge ``soc`` in [0, 1] (continuous local state, d = 1).
The grid is ``normal`` or at ``peak`` (global state, a Markov chain); the operator broadcasts a charging
cap (global action: 0, 50% or 100% of the charger power). A vehicle is out driving with probability 0.3
per step (it then uses energy and cannot charge). Reward: minus the energy bill (price by grid state)
minus a penalty for every vehicle below 20% charge, averaged over the vehicles (docs/model.md §1.1).

Evaluate two hand-written policies through the Python API (``check_simulator`` runs first and names any
problem), then train DeepSets on it with train.py and evaluate the run with evaluate.py, all from the
repository root (so that ``examples.my_simulator`` imports):

    python examples/my_simulator.py            # two policies, paired by common random numbers
    python train.py env=custom env._target_=examples.my_simulator.EVFleet n=1000 k=8 hydra.run.dir=logs/ev_fleet
    python evaluate.py runs=logs/ev_fleet      # report.md, results.csv and plots in logs/evaluate/<time>/
"""

import torch

from sqtorch.envs import LocalSpace, Simulator, check_simulator
from sqtorch.evaluation import compare_mc


class EVFleet(Simulator):
    G, A, gamma, name = 2, 3, 0.95, "ev_fleet"  # grid normal/peak; cap 0, 0.5, 1
    local = LocalSpace.continuous(1, low=0.0, high=1.0)
    price, caps = torch.tensor([0.1, 0.6], dtype=torch.float64), torch.tensor([0.0, 0.5, 1.0])

    def initial(self, n, batch, generator):
        s_g = torch.randint(2, (batch,), generator=generator)
        return s_g, torch.rand(batch, n, 1, generator=generator)

    def global_step(self, s_g, a_g, generator):
        flip = torch.rand(s_g.shape, generator=generator) < torch.where(s_g == 1, 0.3, 0.1)
        return torch.where(flip, 1 - s_g, s_g)

    def _charge(self, s_l, a_g, driving):  # energy charged this step, per vehicle
        return torch.where(driving, 0.0, self.caps[a_g][:, None, None] * 0.1).minimum(1 - s_l)

    def local_step(self, s_g, s_l, a_g, generator):
        driving = torch.rand(s_l.shape, generator=generator) < 0.3
        return (s_l + self._charge(s_l, a_g, driving) - 0.08 * driving).clamp(0.0, 1.0)

    def reward(self, s_g, s_l, a_g):  # expected bill (a parked vehicle charges) + low-battery penalty
        charged = self._charge(s_l, a_g, torch.zeros_like(s_l, dtype=torch.bool)) * 0.7
        return -self.price[s_g] * charged.mean((1, 2), dtype=torch.float64) - (s_l < 0.2).double().mean((1, 2))


class Cap:  # a fixed cap per grid state
    def __init__(self, caps, k=1):
        self.caps, self.k = torch.tensor(caps), k

    def act(self, s_g, s_sub):
        return self.caps[s_g]


class LowBatteryAware(Cap):  # at peak, charge fully only if many sampled vehicles run low
    def act(self, s_g, s_sub):
        low = (s_sub[..., 0] < 0.3).float().mean(1) > 0.25
        return torch.where((s_g == 1) & low, 2, self.caps[s_g])


if __name__ == "__main__":
    sim = EVFleet()
    check_simulator(sim)
    d = compare_mc(sim, LowBatteryAware([2, 0], k=10), Cap([2, 0]), n=1000, num_initial=8, rollouts=16)
    print(f"V(aware) = {d.a.mean:.4f}, V(price only) = {d.b.mean:.4f}, difference {d.mean_diff:+.4f} +- {d.ci95:.4f}")
