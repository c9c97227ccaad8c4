"""Work after completion: the outbox, notifications, after-upload actions.
"""
