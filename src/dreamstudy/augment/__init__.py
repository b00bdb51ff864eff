"""Augmentation strategies; importing this package registers every built-in one."""

from dreamstudy.augment import classic, none  # noqa: F401  (registration)
from dreamstudy.augment import scale  # noqa: F401  (registration)
from dreamstudy.augment import specialist  # noqa: F401  (registration)
from dreamstudy.augment import background  # noqa: F401  (registration)
from dreamstudy.augment import mix  # noqa: F401  (registration)
from dreamstudy.augment import img2img  # noqa: F401  (registration)
from dreamstudy.augment import controlnet  # noqa: F401  (registration)
from dreamstudy.augment.registry import STRATEGIES, Augmented, Context, get_strategy, register  # noqa: F401
from dreamstudy.augment.dataset import Example, augment_subject, read_training_set  # noqa: F401
