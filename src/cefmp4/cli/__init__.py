"""The commands: run, upload, status, check.
"""
