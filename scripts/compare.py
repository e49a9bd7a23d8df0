"""Compare Alrao with SGD at every rate of a grid, default Adam and tuning-free peers.

    python scripts/compare.py --env Pendulum-v1 --seeds 3 --total-steps 30000 --out results/pendulum

A thin entry: the program is :mod:`alrao_cli.compare` (``--help`` lists every flag), also installed as
the command ``alrao-compare`` by ``pip install -e .``.
"""

import sys

from alrao_cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
