"""Behavioral cloning: a policy fitted to an expert's demonstrations, the baseline beside the world
model (Ha & Schmidhuber's controller trained in the dream).

- :mod:`dreamlab.bc.data`: record demonstrations, batches of (observation, action).
- :mod:`dreamlab.bc.train`: ``train_bc`` through the one gradient loop (``dreamlab.train.fit``).
- :mod:`dreamlab.bc.policy`: ``BCPolicy`` with the SB3-shaped ``predict``.
- :mod:`dreamlab.bc.commands`: ``dreamlab train-bc`` (run directories).
- :mod:`dreamlab.bc.compare`: ``dreamlab compare``, BC vs the world model under distribution shift.

The network itself is :class:`dreamlab.models.bc.BCNet` (kind ``bc`` in the checkpoint registry).
"""

from __future__ import annotations

from dreamlab.bc.data import feature_dataset, pixel_batches, record_demos
from dreamlab.bc.policy import BCPolicy
from dreamlab.bc.train import bc_config_for, train_bc

__all__ = [
    "BCPolicy",
    "bc_config_for",
    "feature_dataset",
    "pixel_batches",
    "record_demos",
    "train_bc",
]
