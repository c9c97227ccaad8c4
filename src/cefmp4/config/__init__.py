"""Settings, their checks, credentials, and the adapters built from them.
"""
