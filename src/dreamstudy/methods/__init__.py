"""Personalization methods; importing this package registers every built-in one."""

from dreamstudy.methods import dreambooth  # noqa: F401  (registration)
from dreamstudy.methods import lora  # noqa: F401  (registration)
from dreamstudy.methods import textual_inversion  # noqa: F401  (registration)
from dreamstudy.methods import custom_diffusion  # noqa: F401  (registration)
from dreamstudy.methods.registry import METHODS, Method, Schedule, get_method  # noqa: F401
