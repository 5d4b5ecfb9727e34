"""Reading upstream bodies within limits, compressed and decompressed alike.

A hostile upstream can send a 1 MB gzip page that inflates to gigabytes, or a page of hundreds of
megabytes: aiohttp would inflate and buffer all of it. So the session does not decompress: we count the
bytes as they arrive and inflate them ourselves (RFC 9110 section 8.4.1: gzip and deflate, the codings we
ask for), never producing more than the limit, and a body over it is an UpstreamError naming the limit.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import aiohttp

from proxy.errors import UpstreamError

ACCEPT_ENCODING = "gzip, deflate"
_CHUNK = 1 << 16


class BodyTooLarge(UpstreamError):
    pass


def _decoder(coding: str) -> zlib._Decompress | None:
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return None
    if coding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if coding == "deflate":
        return zlib.decompressobj()  # zlib-wrapped deflate, as RFC 9110 section 8.4.1.2 defines it
    raise UpstreamError(f"upstream sent a body in the {coding!r} coding, which was not asked for")


async def decoded_chunks(response: aiohttp.ClientResponse, limit: int, what: str) -> AsyncIterator[bytes]:
    """The body, decoded, in chunks; BodyTooLarge once more than ``limit`` bytes arrive or would come out."""
    announced = response.content_length
    if announced is not None and announced > limit:
        raise BodyTooLarge(f"upstream's {what} has {announced} bytes, more than the limit of {limit}")
    decoder = _decoder(response.headers.get("Content-Encoding", ""))
    received = produced = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge(f"upstream's {what} is larger than the limit of {limit} bytes")
        if decoder is None:
            produced += len(chunk)
            yield chunk
            continue
        data = chunk
        while data:
            try:
                out = decoder.decompress(data, limit - produced + 1)
            except zlib.error as exc:
                raise UpstreamError(f"upstream's {what} is not valid compressed data: {exc}") from None
            produced += len(out)
            if produced > limit:
                raise BodyTooLarge(f"upstream's {what} inflates past the limit of {limit} bytes")
            if out:
                yield out
            data = decoder.unconsumed_tail
    if decoder is not None:
        tail = decoder.flush()
        produced += len(tail)
        if produced > limit:
            raise BodyTooLarge(f"upstream's {what} inflates past the limit of {limit} bytes")
        if tail:
            yield tail


async def read_bounded(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    parts = [chunk async for chunk in decoded_chunks(response, limit, what)]
    return b"".join(parts)
