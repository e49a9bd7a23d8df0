"""Train the Penn Treebank character LSTM with Alrao (no learning rate to tune), SGD or Adam.

    python scripts/run_ptb.py --data-dir path/to/ptb --alrao

A thin entry: the program is :mod:`alrao_cli.run_ptb` (``--help`` lists every flag), also installed as
the command ``alrao-ptb`` by ``pip install -e .``.
"""

import sys

from alrao_cli.run_ptb import main

if __name__ == "__main__":
    sys.exit(main())
