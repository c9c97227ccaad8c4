"""cefmp4 performance bench: catch-up, drop, live, many and idle scenarios.

Run ``.venv/bin/python -m bench --help`` (or ``bench/run``) from the repository root.
"""
