"""Augmentation strategies (one module each, imported by name when used: see registry.py) and the
training sets they write."""

from dreamstudy.augment.dataset import Example, augment_subject, read_training_set  # noqa: F401
from dreamstudy.augment.registry import MODULES, Augmented, Context, get_strategy, register, strategy_context  # noqa: F401
