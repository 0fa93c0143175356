"""Pull mode's far ends for the benchmark, in one process: an HTTP audio source and a webhook sink that counts.

    python -m bench.pullsrc --port P --file AUDIO

``GET /audio`` serves the file (sendfile); ``POST /hook`` reads and counts a callback; ``GET /stats`` answers
``{"hooks": N, "ended": M}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvloop
from aiohttp import web

from bench.upstream import raise_nofile, serve_app_until_stopped

COUNTS = web.AppKey("counts", dict)


async def _audio(request: web.Request) -> web.FileResponse:
    return web.FileResponse(request.app["file"], headers={"Content-Type": "audio/aac"})


async def _hook(request: web.Request) -> web.Response:
    body = await request.read()
    counts = request.app[COUNTS]
    counts["hooks"] += 1
    if b'"event": "ended"' in body or b'"event":"ended"' in body:
        counts["ended"] += 1
    return web.Response(status=200)


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[COUNTS])


def make_app(file: Path) -> web.Application:
    """The source-and-sink application."""
    app = web.Application()
    app["file"] = file
    app[COUNTS] = {"hooks": 0, "ended": 0}
    app.router.add_get("/audio", _audio)
    app.router.add_post("/hook", _hook)
    app.router.add_get("/stats", _stats)
    return app


def main() -> None:
    """Serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", type=Path, required=True)
    args = parser.parse_args()
    raise_nofile()
    uvloop.run(serve_app_until_stopped(make_app(args.file), args.port, backlog=1024))


if __name__ == "__main__":
    main()
