"""The command-line programs of alrao-rl: argument parsing, one-line errors, exit statuses, outputs.

Each module's ``main(argv=None) -> int`` is a console entry point (``[project.scripts]`` in
``pyproject.toml``) and is also run by the thin file of the same name in ``scripts/``:

=============================  ===================  ==============================================
module                         command              what it does
=============================  ===================  ==============================================
:mod:`alrao_cli.run_dqn`       ``alrao-dqn``        trains DQN (Alrao, SGD or Adam) on a gymnasium task
:mod:`alrao_cli.evaluate`      ``alrao-evaluate``   greedy episodes of a trained agent (run_dqn or SB3)
:mod:`alrao_cli.run_cifar`     ``alrao-cifar``      trains a CIFAR-10 classifier
:mod:`alrao_cli.run_ptb`       ``alrao-ptb``        trains the Penn Treebank character LSTM
:mod:`alrao_cli.compare`       ``alrao-compare``    Alrao against an SGD grid, Adam and peers
=============================  ===================  ==============================================

:mod:`alrao_cli.common` holds what they share. Nothing here runs at import; the training code lives
in :mod:`agents` and :mod:`alrao_rl` and is imported when a command runs.
"""
