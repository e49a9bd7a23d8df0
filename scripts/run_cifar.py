"""Train a CIFAR-10 classifier with Alrao (no learning rate to tune), SGD or Adam.

    python scripts/run_cifar.py --data-dir path/to/cifar-10-batches-py --alrao

A thin entry: the program is :mod:`alrao_cli.run_cifar` (``--help`` lists every flag), also installed as
the command ``alrao-cifar`` by ``pip install -e .``.
"""

import sys

from alrao_cli.run_cifar import main

if __name__ == "__main__":
    sys.exit(main())
