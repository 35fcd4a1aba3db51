"""The rating page and its JSON API (FastAPI on uvicorn, pages from Jinja2 templates).

    cocoedit rate serve STUDY [--host 127.0.0.1] [--port 8765] [--raters NAME ...]

Routes (the rater's token travels in the `X-Rater-Token` header, or `?token=` for <img> and the page):
    GET  /                      name form (loopback only) or "open your link"
    POST /login                 name -> the rater's page (loopback only; elsewhere tokens only)
    GET  /rate?token=T          the page
    GET  /api/next              the rater's next task (no system names), progress
    GET  /api/image/POS/WHICH   left | right | source image of queue position POS
    POST /api/answer            {"pos", "task_id", "choice": left|right|tie, "score": 1-5|null, "time_ms"}
    POST /api/undo              undo the rater's latest answer
Errors are 4xx with {"detail": "..."} and leave the database unchanged: 403 unknown token, 404 unknown
task or image, 409 replayed or out-of-order answer, 413 body over MAX_BODY bytes, 422 malformed answer.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from cocoedit.cluster.rate.design import CHOICES, rater_queue, task_item
from cocoedit.cluster.rate.store import DB_FILE, AnswerRejected, Store

MAX_BODY = 2048  # bytes: an answer is ~100
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class HTTPError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def task_id(task: dict[str, Any]) -> str:
    return f"{task['kind']}:{task['ref']}:{task['criterion']}"


def make_app(study: Path, open_enrollment: bool) -> FastAPI:
    """The app of one study. `open_enrollment`: anyone may pick a rater name (loopback binds only)."""
    study = Path(study).resolve()
    store = Store(study / DB_FILE)
    design = store.design()
    questions = {c["name"]: c["question"] for c in design["criteria"]}
    templates = Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html"])
    )
    queues: dict[str, list[dict[str, Any]]] = {}
    lock = threading.Lock()
    app = FastAPI(title="cocoedit rating", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.middleware("http")
    async def _limit_body(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return JSONResponse({"detail": f"request body over {MAX_BODY} bytes"}, status_code=413)
        return await call_next(request)

    def rater(token: Optional[str]) -> tuple[int, str, list[dict[str, Any]]]:
        row = store.rater_by_token(token) if token else None
        if row is None:
            raise HTTPError(403, "unknown rater token: open the link you were given (or log in by name)")
        with lock:
            if row["name"] not in queues:
                queues[row["name"]] = rater_queue(design, row["name"])
        return int(row["id"]), str(row["name"]), queues[row["name"]]

    def header_token(request: Request) -> Optional[str]:
        return request.headers.get("x-rater-token") or request.query_params.get("token")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return templates.get_template("index.html").render(open_enrollment=open_enrollment)

    @app.post("/login")
    async def login(request: Request) -> RedirectResponse:
        if not open_enrollment:
            raise HTTPError(403, "this server rates by token only: open the link the study owner gave you")
        form = await request.form()
        try:
            token = store.add_rater(str(form.get("name", "")))
        except ValueError as e:
            raise HTTPError(422, str(e)) from None
        return RedirectResponse(f"/rate?token={token}", status_code=303)

    @app.get("/rate", response_class=HTMLResponse)
    def page(request: Request) -> str:
        _, name, _ = rater(request.query_params.get("token"))
        return templates.get_template("rate.html").render(
            name=name, token=request.query_params["token"], criteria=design["criteria"]
        )

    @app.get("/api/next")
    def next_task(request: Request) -> dict[str, Any]:
        rater_id, name, queue = rater(header_token(request))
        done = store.answered(rater_id)
        progress = {"answered": len(done), "total": len(queue)}
        todo = [p for p in range(len(queue)) if p not in done]
        if not todo:
            return {"done": True, "rater": name, "progress": progress}
        pos = todo[0]
        task = queue[pos]
        item = task_item(design, task)
        return {
            "done": False,
            "rater": name,
            "pos": pos,
            "task_id": task_id(task),
            "item": item["id"],
            "criterion": task["criterion"],
            "question": questions[task["criterion"]],
            "instruction": item["instruction"],
            "images": {w: f"/api/image/{pos}/{w}" for w in ("source", "left", "right")},
            "progress": progress,
        }

    @app.get("/api/image/{pos}/{which}")
    def image(pos: int, which: str, request: Request) -> FileResponse:
        _, _, queue = rater(header_token(request))
        if not 0 <= pos < len(queue) or which not in ("left", "right", "source"):
            raise HTTPError(404, f"no image {which!r} for task {pos}")
        task = queue[pos]
        rel = task_item(design, task)["source"] if which == "source" else task[which]
        return FileResponse(study / rel, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.post("/api/answer")
    async def answer(request: Request) -> dict[str, Any]:
        rater_id, _, queue = rater(header_token(request))
        body = await request.body()
        if len(body) > MAX_BODY:
            raise HTTPError(413, f"request body over {MAX_BODY} bytes")
        msg = _parse_answer(body)
        pos = msg["pos"]
        if not 0 <= pos < len(queue) or task_id(queue[pos]) != msg["task_id"]:
            raise HTTPError(404, f"unknown task {msg['task_id']!r} at position {pos} for this rater")
        try:
            row = store.answer(rater_id, pos, queue[pos], msg["choice"], msg["score"], msg["time_ms"])
        except AnswerRejected as e:
            raise HTTPError(e.status, str(e)) from None
        return {"ok": True, "id": row, "pos": pos}

    @app.post("/api/undo")
    def undo(request: Request) -> dict[str, Any]:
        rater_id, _, _ = rater(header_token(request))
        return {"ok": True, "undone": store.undo(rater_id)}

    return app


def _parse_answer(body: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPError(422, "the answer is not JSON") from None
    if not isinstance(msg, dict):
        raise HTTPError(422, "the answer must be a JSON object")
    extra = set(msg) - {"pos", "task_id", "choice", "score", "time_ms"}
    if extra:
        raise HTTPError(422, f"unknown fields {sorted(extra)}")
    pos, tid, choice = msg.get("pos"), msg.get("task_id"), msg.get("choice")
    score, time_ms = msg.get("score"), msg.get("time_ms", 0)
    if not isinstance(pos, int) or isinstance(pos, bool) or not isinstance(tid, str):
        raise HTTPError(422, "pos (integer) and task_id (string) are required")
    if choice not in CHOICES:
        raise HTTPError(422, f"choice must be one of {list(CHOICES)}, got {choice!r}")
    if score is not None and (not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 5):
        raise HTTPError(422, f"score must be an integer 1-5 or null, got {score!r}")
    if not isinstance(time_ms, int) or isinstance(time_ms, bool) or not 0 <= time_ms < 86_400_000:
        raise HTTPError(422, f"time_ms must be an integer 0..86400000, got {time_ms!r}")
    return {"pos": pos, "task_id": tid, "choice": choice, "score": score, "time_ms": time_ms}


def serve(study: Path, host: str = "127.0.0.1", port: int = 8765) -> int:
    """Bind, print the address (port 0: a free one), and serve until stopped."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # connections wait in the backlog from here on, before uvicorn accepts them
    app = make_app(study, open_enrollment=host in LOOPBACK)
    url_host = f"[{host}]" if ":" in host else host
    print(f"serving {study} on http://{url_host}:{sock.getsockname()[1]}/", flush=True)
    if host not in LOOPBACK:
        print("bound beyond loopback: only raters with a token link can rate", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
    sys.stdout.flush()
    return 0
