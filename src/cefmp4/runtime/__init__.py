"""The process: composition root, supervised tasks, health, metrics, logs, clock, retry,
errors.
"""
