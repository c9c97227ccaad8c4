"""A part body on the wire, as aiohttp sends it: for the in-memory store to be faithful.

aiohttp's payload writer reads a file-like body in 2**16-byte blocks on the executor while
the request is in flight, so a read error fails the request midway, and bytes rewritten
after hashing are the bytes that arrive. cefmp4's S3 adapter (``storage/s3_body.py``) carries
a source error (``SourceError``) out of the request as itself; anything else the body raises
reaches the caller as a transport failure, as aiobotocore reports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from cefmp4.runtime.errors import SourceError, TransientError
from cefmp4.storage import BinaryIOLike
from cefmp4.storage.pacing import pace

BODY_BLOCK = 64 * 1024


async def send_body(
    body: BinaryIOLike, block: int, after_block: Callable[[int], Awaitable[None]]
) -> bytes:
    """Every byte of ``body`` as it was when read, block by block; ``after_block(sent)``
    runs between blocks (a slow network, in tests)."""
    loop = asyncio.get_running_loop()
    declared = len(body)
    blocks: list[bytes] = []
    got = 0
    while got < declared:
        await pace(min(block, declared - got))  # UPLOAD_BWLIMIT, as the S3 body is paced
        try:
            chunk = await loop.run_in_executor(None, body.read, min(block, declared - got))
        except SourceError:
            raise  # as the S3 adapter does: the file, not the network, failed
        except Exception as exc:
            # The caller sees a transport failure caused by the body, as with aiohttp.
            raise TransientError(
                "UploadPart failed: the connection broke while sending the body "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        if not chunk:
            raise TransientError(
                f"UploadPart failed: body ended at {got} of {declared} bytes (IncompleteBody)"
            )
        blocks.append(chunk)
        got += len(chunk)
        await after_block(got)
    return b"".join(blocks)
