"""Helpers shared by test modules (``tests/`` is on pytest's ``pythonpath``): ``from support.trainer import ...``.

Fixtures live in conftest.py files; these modules hold plain functions and classes that tests import.
"""
