"""Prefect flows composing the tasks in ``tasks/``; each is runnable as ``python -m flows.<name>``."""
