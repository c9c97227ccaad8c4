"""Pure decisions and values: keys, containers, part schedule, digests, metadata, identity. No
asyncio, os, S3, store or clock.
"""
