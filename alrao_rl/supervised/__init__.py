"""Supervised experiments of the Alrao paper: CIFAR-10 and Penn Treebank data, and their models.

* :mod:`alrao_rl.supervised.cifar`: CIFAR-10 from local files, split, normalisation, augmentation.
* :mod:`alrao_rl.supervised.ptb`: Penn Treebank at word and character level, language-model batches.
* :mod:`alrao_rl.supervised.models`: VGG19, MobileNetV2, GoogLeNet, ResNet18 bodies and the PTB LSTM.
* :mod:`alrao_rl.supervised.train`: the training loop (Alrao, SGD, Adam; early stopping, test of the best epoch).
* :mod:`alrao_rl.supervised.distributed`: data-parallel training (DistributedDataParallel, switch across ranks).
"""

from alrao_rl.supervised.cifar import (
    Cifar10,
    CifarBatches,
    augment,
    channel_stats,
    load_cifar10,
    normalize,
    read_binary_batch,
    read_python_batch,
    split_train_valid,
)
from alrao_rl.supervised.models import (
    CIFAR_MODELS,
    CharLSTM,
    make_char_lstm,
    make_cifar_model,
    scale_channels,
)
from alrao_rl.supervised.ptb import (
    EOS,
    SPACE,
    UNK,
    Vocabulary,
    batchify,
    bptt_segments,
    load_ptb,
    load_ptb_dir,
    read_char_file,
    read_chars,
    read_words,
)
from alrao_rl.supervised.train import (
    CifarData,
    PtbData,
    SupervisedNet,
    TrainConfig,
    evaluate,
    prepare_cifar,
    prepare_ptb,
    spawn_train_classifier,
    train_classifier,
    train_step,
)

__all__ = [
    "CIFAR_MODELS",
    "EOS",
    "SPACE",
    "UNK",
    "CharLSTM",
    "Cifar10",
    "CifarBatches",
    "CifarData",
    "PtbData",
    "SupervisedNet",
    "TrainConfig",
    "Vocabulary",
    "augment",
    "batchify",
    "bptt_segments",
    "channel_stats",
    "evaluate",
    "load_cifar10",
    "load_ptb",
    "load_ptb_dir",
    "make_char_lstm",
    "make_cifar_model",
    "normalize",
    "prepare_cifar",
    "prepare_ptb",
    "read_binary_batch",
    "read_char_file",
    "read_chars",
    "read_python_batch",
    "read_words",
    "scale_channels",
    "spawn_train_classifier",
    "split_train_valid",
    "train_classifier",
    "train_step",
]
