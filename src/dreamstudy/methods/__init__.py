"""Personalization methods (one module each, imported by name when used: see registry.py)."""

from dreamstudy.methods.registry import MODULES, Method, Schedule, get_method  # noqa: F401
