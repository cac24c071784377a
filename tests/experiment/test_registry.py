"""The algorithm registry: a toy algorithm registered from a test runs through train.py and evaluate.py."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sqtorch.experiment import ALGORITHMS, ConfigError, get_algorithm, run, validate_config
from sqtorch.experiment.runs import collect
from sqtorch.tabular.counts import num_counts

ROOT = Path(__file__).resolve().parents[2]

# A uniformly random Q-table: its greedy policy plays an action drawn uniformly at random for each
# (s_g, count vector of the k sampled agents). One module, one config, as every algorithm is.
TOY = textwrap.dedent('''
    from dataclasses import dataclass

    import torch

    from sqtorch import metrics as M
    from sqtorch.evaluation.reference import evaluate_return
    from sqtorch.experiment import Algorithm, LoadedPolicy, register_algorithm
    from sqtorch.experiment.outputs import finish, logging_to
    from sqtorch.tabular.counts import num_counts
    from sqtorch.tabular.qtable import QTable


    @dataclass
    class RandomTableConfig:
        name: str = "random_table"


    class RandomTable(Algorithm):
        name = "random_table"
        config = RandomTableConfig
        artifact = "random_table.pt"

        def train(self, ctx):
            spec, env = ctx.spec, ctx.spec.env
            gen = torch.Generator().manual_seed(spec.seed)
            q = torch.rand(env.G, num_counts(spec.k, env.L), env.A, generator=gen, dtype=torch.float64)
            table = QTable(q, spec.k, env.L, env.name)
            table.save(ctx.out / self.artifact)
            mean, ci = evaluate_return(env, table, spec.n, **spec.eval.mc_kwargs())
            metrics = {M.EVAL_RETURN: mean, M.EVAL_RETURN_CI: ci, M.TRAIN_SAMPLES: 0.0}
            with logging_to(ctx.cfg) as tb:
                return finish(ctx.cfg, spec, ctx.out, tb, metrics, 0, "random")

        def load(self, path, cfg, metrics):
            table = QTable.load(path / self.artifact)
            return LoadedPolicy(table, "random table", table.k, table.q.numel(), 0.0, deterministic=True)


    register_algorithm(RandomTable())
''')


@pytest.fixture
def toy_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The toy algorithm as an importable module ``toy_random_table`` (registered on import)."""
    (tmp_path / "toy_random_table.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "toy_random_table"
    ALGORITHMS.pop("random_table", None)
    sys.modules.pop("toy_random_table", None)


def test_builtin_algorithms_are_registered():
    assert {"tabular", "deepsets", "sb3_dqn", "sb3_ppo"} <= set(ALGORITHMS)
    with pytest.raises(ValueError, match=r"algo = 'nope' is unknown; allowed: \["):
        get_algorithm("nope")


def test_toy_algorithm_in_process(toy_module, make_cfg, tmp_path):
    importlib.import_module(toy_module)
    cfg = make_cfg("algo=random_table", "env=queue", "n=4", "k=2", "eval.num_initial=4", "eval.rollouts=4",
                   out=tmp_path / "run")
    spec = validate_config(cfg)
    assert type(spec.algo).__name__ == "RandomTableConfig"
    metrics = run(cfg)
    assert (tmp_path / "run" / "random_table.pt").is_file() and (tmp_path / "run" / "metrics.json").is_file()
    [r], missing, skipped = collect([tmp_path / "run"])
    assert (missing, skipped) == ([], [])
    assert r.algo == "random table" and r.k == 2 and r.deterministic
    assert r.size == 4 * num_counts(2, 5) * 3  # G * C(k+L-1, k) * A of queue (Q = 4)
    # the greedy policy is the argmax of the seeded uniform table
    q = torch.rand(4, num_counts(2, 5), 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(r.policy.greedy(), q.argmax(-1))
    assert metrics["eval/return"] < 0
    with pytest.raises(ConfigError, match="ckpt_path is not supported by algo = 'random_table'"):
        validate_config(make_cfg("algo=random_table", "n=4", "k=2", f"ckpt_path={tmp_path}"))


@pytest.mark.slow
def test_toy_algorithm_through_train_and_evaluate(toy_module, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]), SQTORCH_PLUGINS=toy_module)

    def cli(script: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)

    sweep = tmp_path / "sweep"
    p = cli("train.py", "-m", "algo=random_table", "env=queue", "n=4", "k=1,2", "threads=1",
            "eval.num_initial=4", "eval.rollouts=4", "logger=none", f"hydra.sweep.dir={sweep}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("[sqtorch] random_table env=queue n=4") == 2, p.stdout[-2000:]
    out = tmp_path / "eval"
    p = cli("evaluate.py", f"runs={sweep}", "eval.num_initial=4", "eval.rollouts=4", "threads=1",
            f"hydra.run.dir={out}")
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert sorted((row["algo"], row["k"]) for row in summary) == [("random table", 1), ("random table", 2)]
    assert all(row["deterministic"] for row in summary)
    # without the plugin the run dirs name an algorithm nobody registered: skipped, with the reason
    env.pop("SQTORCH_PLUGINS")
    p = cli("evaluate.py", f"runs={sweep}", "threads=1", f"hydra.run.dir={tmp_path / 'eval2'}")
    assert p.returncode == 2 and "algo = 'random_table' is unknown" in p.stderr, p.stderr[-2000:]
