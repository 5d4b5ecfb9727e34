"""The floor of any aiohttp server on this machine: the page bytes from memory, nothing else.

    .venv/bin/python bench/bare_aiohttp.py --port P --pages DIR

Serves each file of DIR at ``/pages/<name>`` (its ``<name>.gz`` twin to clients that accept gzip) with the
same aiohttp as wheelfarm, one ``web.Response`` per request: no middleware, no access log, no negotiation,
no cache lookup. What this process reaches is what an aiohttp server can reach at best here, so
wheelfarm's distance to it is its own per-request work, and its distance to nginx is the framework's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aiohttp import web

CONTENT_TYPES = {".json": "application/vnd.pypi.simple.v1+json", ".html": "text/html"}


def create_app(pages: Path) -> web.Application:
    bodies = {p.name: p.read_bytes() for p in pages.iterdir()}

    async def page(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        gzipped = bodies.get(name + ".gz") if "gzip" in request.headers.get("Accept-Encoding", "") else None
        body = gzipped if gzipped is not None else bodies.get(name)
        if body is None:
            raise web.HTTPNotFound()
        content_type = CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream")
        response = web.Response(body=body, content_type=content_type)
        if gzipped is not None:
            response.headers["Content-Encoding"] = "gzip"  # the twin as stored, like nginx's gzip_static
        return response

    async def index(request: web.Request) -> web.Response:
        return web.Response(text="\n".join(sorted(bodies)) + "\n")

    app = web.Application()
    app.router.add_get("/pages/{name}", page)
    app.router.add_get("/", index)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pages", type=Path, required=True)
    args = parser.parse_args()
    web.run_app(create_app(args.pages), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
