"""The photo benchmark's transport floor: a bare ASGI app that does only what an upload must do —
hash the body while writing it to a file, fsync, keep the file, answer 201 — behind the same uvicorn
as Firegrid.

    uvicorn bench.raw_upload_app:app --workers 2      (bench/photo_bench.py starts it itself)

Its CPU per photo is what the HTTP server and the unavoidable work cost before any of Firegrid's
own (authentication, name check, structural check, publish, database row).
"""

import hashlib
import os
import tempfile

DIRECTORY = os.environ.get("RAW_UPLOAD_DIR") or tempfile.mkdtemp(prefix="raw-upload-")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    digest = hashlib.sha256()
    fd, path = tempfile.mkstemp(dir=DIRECTORY)
    with os.fdopen(fd, "wb") as f:
        while True:
            message = await receive()
            body = message.get("body", b"")
            digest.update(body)
            f.write(body)
            if not message.get("more_body"):
                break
        f.flush()
        os.fsync(f.fileno())
    # kept, like a store keeps its photos: deleting each file at once let the next upload reuse its
    # page-cache pages, which costs less than growing the cache as a real store (and Firegrid) does
    await send({"type": "http.response.start", "status": 201 if scope["method"] == "PUT" else 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": digest.hexdigest().encode()})
