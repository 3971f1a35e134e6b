"""Tasks the policy is trained and evaluated on: the built-in chain sums and benchmark loaders."""

from workbench.tasks.benchmarks import list_benchmarks, load_benchmark
from workbench.tasks.micro import BOXED, ChainSumTask, Problem, build_task, chain_sum_solution, last_boxed

__all__ = ["BOXED", "ChainSumTask", "Problem", "build_task", "chain_sum_solution", "last_boxed", "list_benchmarks", "load_benchmark"]
