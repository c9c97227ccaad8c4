"""A randomized fault-model simulator of the whole pipeline (issue #10).

One seed is one schedule: recorders writing real files, process crashes, S3 and checkpoint
store faults, all in virtual time on one thread, so a run is fast and a seed replays.
``python -m tests.sim SEED`` replays one; ``scripts/test tests/sim --sim-seeds N`` runs N.
"""
