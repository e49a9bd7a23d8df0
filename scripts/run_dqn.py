"""Train a DQN agent with Alrao (no learning rate to tune), SGD or Adam, on a gymnasium task.

    python scripts/run_dqn.py --env Pendulum-v1 --alrao

A thin entry: the program is :mod:`alrao_cli.run_dqn` (``--help`` lists every flag), also installed as
the command ``alrao-dqn`` by ``pip install -e .``.
"""

import sys

from alrao_cli.run_dqn import main

if __name__ == "__main__":
    sys.exit(main())
