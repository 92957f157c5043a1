"""Shared plumbing on the ground floor: console and progress bars, checkpoints, run folders, devices.

Every other layer may import from here; nothing here imports from the rest of coinseg except ``config``,
``errors`` and ``io``.
"""
