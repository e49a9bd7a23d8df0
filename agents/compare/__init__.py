"""Alrao against SGD at every rate of a grid, default Adam, AdaQN and tuning-free peers: the protocol of the
paper's Table 1 (Section 5), made explicit, for DQN (``task="rl"``), SAC and TD3 (``task="sac"``, ``"td3"``: Alrao
critics against the critics' Adam rate on a grid, :mod:`agents.continuous`) and the supervised tasks.

**Runs.** For every seed: Alrao (rates in ``[eta_min, eta_max]``), SGD at every rate of the grid
(default ``{1e-5, ..., 10}``), Adam with its defaults, and optionally AdaQN (DQN only, :data:`RL_METHODS`:
Adam networks at a grid of rates, the target taken from the best; :mod:`agents.adaqn`) and tuning-free
optimizers with their defaults (:data:`PEERS`: Prodigy, D-Adaptation SGD/Adam, DoG, schedule-free SGD/AdamW). Each
run is the project's own training function (:func:`agents.dqn.train`,
:func:`alrao_rl.supervised.train.train_classifier`) with its usual outputs in
``out/runs/<method>[-lr<rate>]/seed<k>/``, plus ``compare.json`` (the run's specification, its hash
and its result) that makes a sweep resumable.

**Selection, then a fresh test.** SGD's rate is chosen on *selection* data only, then every method
is reported on *test* data that played no part in any choice:

* RL: selection = the final evaluation of :func:`agents.dqn.train` (greedy episodes seeded
  ``1_000_000 + 1000 seed + k``); the rate with the best mean over seeds of that return is chosen.
  Test = the final policy (``checkpoint.pt``) on new greedy episodes seeded
  ``2_000_000 + 1000 seed + k``.
* Supervised: selection = the validation loss of the run's best-validation epoch; test = the test
  loss and accuracy of that epoch (what ``train_classifier`` reports).

**Failed runs** are kept and counted, never dropped: a run fails when a selection or test value is
not finite (divergence, or an error during the run) or when its test value is worse than the
*floor* of its task: the mean return of a uniformly random policy (measured on a few episodes per
env, :func:`random_policy_returns`) or the loss of the uniform prediction (``ln 10`` nats on
CIFAR-10, ``log2(vocabulary)`` bits on PTB). A value that is not finite enters the means, IQMs and
the selection as the floor (a diverged run is scored like a random policy), so that a diverging
rate cannot look good by losing its worst seeds.

**Aggregates.** Per method: mean +/- standard deviation over seeds of the test value, the
interquartile mean (IQM: the mean of the middle half of the sorted values, after dropping
``floor(n/4)`` at each end; Agarwal et al. 2021) with a 95% percentile-bootstrap confidence interval
(10,000 resamples of the runs, seeded :class:`numpy.random.Generator`), and the number of failed
runs.

**Modules**, each importing only those before it: :mod:`~agents.compare.plan` (methods, peers,
:class:`RunSpec`, seeds, the training configurations), :mod:`~agents.compare.runs` (one run: training,
test, ``compare.json``), :mod:`~agents.compare.backends` (where runs execute: a process pool, Ray),
:mod:`~agents.compare.sweep` (:func:`run_sweep`, ``sweeps.jsonl``), :mod:`~agents.compare.stats`
(floors, failures, SGD's selection, statistics), :mod:`~agents.compare.report` (``results.csv``, the
text of ``report.md``), :mod:`~agents.compare.plots` (the figures), :mod:`~agents.compare.outputs`
(:func:`write_report`: all of them).
"""

from .backends import work_units
from .outputs import write_report
from .plan import (
    BASE_METHODS,
    CONTINUOUS_TASKS,
    DEFAULT_CRITIC_GRID,
    DEFAULT_SGD_GRID,
    GRID_METHODS,
    GRID_NAMES,
    PEERS,
    RL_METHODS,
    TASKS,
    Peer,
    RunSpec,
    check_methods,
    continuous_config,
    dqn_config,
    grid_method,
    plan_runs,
    run_dir,
    test_seeds,
    train_config,
)
from .plan import LABELS as LABELS
from .plan import MAX_EPISODES as MAX_EPISODES
from .plan import PROTOCOL_VERSION as PROTOCOL_VERSION
from .plan import RANDOM_SEED_BASE as RANDOM_SEED_BASE
from .plan import TEST_SEED_BASE as TEST_SEED_BASE
from .report import SweepInfo, write_results_csv
from .runs import RunResult, execute_population, execute_run, load_finished, load_supervised_data
from .stats import (
    MethodSummary,
    Metric,
    bootstrap_ci,
    failure_reason,
    iqm,
    random_policy_returns,
    select_sgd_rate,
    summarize,
    uniform_loss,
)
from .sweep import HISTORY as HISTORY
from .sweep import SweepOutcome, record_sweep, run_sweep, sweep_history, usable_cores

__all__ = [
    "BASE_METHODS",
    "CONTINUOUS_TASKS",
    "DEFAULT_CRITIC_GRID",
    "DEFAULT_SGD_GRID",
    "GRID_METHODS",
    "GRID_NAMES",
    "PEERS",
    "RL_METHODS",
    "TASKS",
    "MethodSummary",
    "Metric",
    "Peer",
    "RunResult",
    "RunSpec",
    "SweepInfo",
    "SweepOutcome",
    "bootstrap_ci",
    "check_methods",
    "continuous_config",
    "dqn_config",
    "execute_population",
    "execute_run",
    "failure_reason",
    "grid_method",
    "iqm",
    "load_finished",
    "load_supervised_data",
    "plan_runs",
    "random_policy_returns",
    "record_sweep",
    "run_dir",
    "run_sweep",
    "select_sgd_rate",
    "summarize",
    "sweep_history",
    "test_seeds",
    "train_config",
    "uniform_loss",
    "usable_cores",
    "work_units",
    "write_report",
    "write_results_csv",
]
