"""Evaluate (and watch) a trained agent: greedy episodes of a run_dqn.py run or an SB3 AlraoDQN zip.

    python scripts/evaluate.py --logdir runs/CartPole-v1-alrao-seed0 --episodes 10

A thin entry: the program is :mod:`alrao_cli.evaluate` (``--help`` lists every flag), also installed as
the command ``alrao-evaluate`` by ``pip install -e .``.
"""

import sys

from alrao_cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
