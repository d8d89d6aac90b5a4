"""The review web application (FastAPI; server-rendered pages, one small script, no CDN).

Security: bind to 127.0.0.1 by default; only Host headers of the bound address are served
(DNS rebinding); images are looked up by (sample_id, cell_id) in the scored tables, so no
request text reaches a filesystem path; static files are a fixed list read at start; every
state change is a JSON POST carrying the token of the caller's session cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import mimetypes
import secrets
from importlib import resources
from urllib.parse import urlencode

import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel
from starlette.middleware.trustedhost import TrustedHostMiddleware

from wbc_ray import __version__
from wbc_ray.review import state as st
from wbc_ray.review.station import ReviewStation, has_boxes
from wbc_ray.review.thumbs import ThumbCache, make_field, placeholder
from wbc_ray.schema import BOX_COLUMNS
from wbc_ray.storage import read_bytes

COOKIE = "wbc_review_session"
TOKEN_HEADER = "x-review-token"
CELLS_PER_PAGE = 300
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_PACKAGE = resources.files("wbc_ray.review")


class Action(BaseModel):
    sample_id: str
    cell_id: str
    action: str
    label: str | None = None
    reviewer: str
    event_id: str | None = None


class SignOff(BaseModel):
    sample_id: str
    reviewer: str
    seen_events: int | None = None


def _static_files() -> dict[str, tuple[bytes, str]]:
    folder = _PACKAGE / "static"
    return {f.name: (f.read_bytes(), mimetypes.guess_type(f.name)[0] or "application/octet-stream")
            for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")}


def allowed_hosts(host: str) -> list[str]:
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    return sorted({host, *LOCAL_HOSTS}) if host in LOCAL_HOSTS else [host]


def create_app(station: ReviewStation, *, host: str = "127.0.0.1") -> FastAPI:
    """The ASGI app over ``station``; ``host`` is the address it is served on."""
    app = FastAPI(title="wbc-ray review", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(host))
    templates = Jinja2Templates(directory=str(_PACKAGE / "templates"))
    templates.env.filters["pct"] = _pct
    static = _static_files()
    thumbs = ThumbCache()
    secret = secrets.token_bytes(32)

    def token_of(session: str) -> str:
        return hmac.new(secret, session.encode(), hashlib.sha256).hexdigest()

    def page(request: Request, name: str, context: dict) -> HTMLResponse:
        session = request.cookies.get(COOKIE) or secrets.token_urlsafe(24)
        context = {"classes": station.classes, "token": token_of(session), "version": __version__,
                   "info": station.run.info, **context}
        resp = templates.TemplateResponse(request, name, context)
        resp.set_cookie(COOKIE, session, httponly=True, samesite="strict")
        return resp

    def check_token(request: Request) -> None:
        session = request.cookies.get(COOKIE, "")
        sent = request.headers.get(TOKEN_HEADER, "")
        if not session or not hmac.compare_digest(sent, token_of(session)):
            raise PermissionError("missing or wrong session token: reload the page")

    @app.exception_handler(st.Conflict)
    async def _conflict(request, e):
        return JSONResponse({"error": str(e)}, status_code=409)

    @app.exception_handler(st.ReviewError)
    async def _refused(request, e):
        return JSONResponse({"error": str(e)}, status_code=400)

    @app.exception_handler(PermissionError)
    async def _forbidden(request, e):
        return JSONResponse({"error": str(e)}, status_code=403)

    @app.exception_handler(KeyError)
    async def _missing(request, e):
        return JSONResponse({"error": f"not in the scored tables: {e}"}, status_code=404)

    @app.get("/", response_class=HTMLResponse)
    def worklist(request: Request, date: str = "latest", status: str = "", flagged: bool = False,
                 q: str = "", sort: str = "flagged", page_no: int = 1):
        try:
            work = station.worklist(date=date, status=status, flagged=flagged, query=q,
                                    sort=sort, page=page_no)
        except st.ReviewError as e:
            return page(request, "error.html", {"message": str(e)})
        params = {"date": work["date"], "status": status, "flagged": str(flagged).lower(),
                  "q": q, "sort": sort}
        return page(request, "worklist.html", {
            "work": work, "rows": work["rows"].to_dict("records"), "params": params,
            "link": lambda **kw: "/?" + urlencode({**params, **kw}),
            "agreement": station.agreement(), "statuses": st.STATUSES})

    @app.get("/sample", response_class=HTMLResponse)
    def sample(request: Request, s: str, page_no: int = 1):
        loaded = machine, state, _ = station.sample_state(s)
        galleries, pages, page_no = _galleries(state, station.classes, page_no)
        return page(request, "sample.html", {
            "sample_id": s, "machine": machine.to_dict(), "live": station.live(s, loaded),
            "galleries": galleries, "page_no": page_no, "pages": pages,
            "fields": bool(has_boxes(state).any())})

    @app.get("/field", response_class=HTMLResponse)
    def field(request: Request, s: str, c: str):
        cell = station.run.cell(s, c)
        if cell is None:
            raise KeyError(f"{s}/{c}")
        cells = station.run.cells(s)
        same = cells[(cells["uri"] == cell["uri"]) & has_boxes(cells)]
        try:
            _, w, h = make_field(read_bytes(cell["uri"]), longest=64)
        except Exception:
            w = h = 0
        live = station.live(s)["cells"]
        boxes = [{"cell_id": r.cell_id, "label": live[r.cell_id]["label"],
                  "excluded": live[r.cell_id]["excluded"], "current": r.cell_id == c,
                  **{k: float(getattr(r, k)) for k in BOX_COLUMNS}}
                 for r in same.itertuples(index=False)]
        return page(request, "field.html", {"sample_id": s, "cell_id": c, "width": w,
                                            "height": h, "boxes": boxes,
                                            "image": "/field.jpg?" + urlencode({"s": s, "c": c})})

    @app.get("/thumb")
    def thumb(s: str, c: str):
        cell = station.run.cell(s, c)
        if cell is None:
            raise KeyError(f"{s}/{c}")
        box = tuple(cell[k] for k in BOX_COLUMNS)
        data, ok = thumbs.get(str(cell["uri"]), box if all(v == v for v in box) else None)
        headers = {"Cache-Control": "private, max-age=3600" if ok else "no-store",
                   "X-Image-Status": "ok" if ok else "placeholder"}
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.get("/field.jpg")
    def field_image(s: str, c: str):
        cell = station.run.cell(s, c)
        if cell is None:
            raise KeyError(f"{s}/{c}")
        try:
            data, _, _ = make_field(read_bytes(str(cell["uri"])))
        except Exception:
            data = placeholder(400, "field image unavailable")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private"})

    @app.get("/static/{name}")
    def static_file(name: str):
        if name not in static:
            return Response("not found", status_code=404)
        data, media = static[name]
        return Response(data, media_type=media, headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/sample")
    def api_sample(s: str):
        return station.live(s)

    @app.get("/api/summary")
    def api_summary():
        return station.summary()

    @app.post("/api/act")
    def api_act(request: Request, body: Action):
        check_token(request)
        return station.act(body.sample_id, body.cell_id, body.action, body.label, body.reviewer,
                           body.event_id)

    @app.post("/api/sign")
    def api_sign(request: Request, body: SignOff):
        check_token(request)
        return station.sign(body.sample_id, body.reviewer, body.seen_events)

    @app.post("/api/refresh")
    def api_refresh(request: Request):
        check_token(request)
        station.run.refresh()
        return {"samples": len(station.run.samples())}

    return app


def _galleries(state: pd.DataFrame, classes, page_no: int) -> tuple[list[dict], int, int]:
    """The review gallery (flagged cells, least confident first), then one per machine class."""
    flagged = state["needs_review"].astype(bool)
    order = [("review", state[flagged].sort_values("confidence", kind="stable"))]
    rest = state[~flagged]
    order += [(c, rest[rest["label"] == c].sort_values("confidence", kind="stable"))
              for c in classes]
    cells = [(name, r) for name, frame in order for r in frame.to_dict("records")]
    pages = max(1, math.ceil(len(cells) / CELLS_PER_PAGE))
    page_no = min(max(1, page_no), pages)
    out: dict[str, list] = {}
    for name, r in cells[(page_no - 1) * CELLS_PER_PAGE: page_no * CELLS_PER_PAGE]:
        r["box"] = all(r.get(k) == r.get(k) and r.get(k) is not None for k in BOX_COLUMNS)
        r["thumb"] = "/thumb?" + urlencode({"s": r["sample_id"], "c": r["cell_id"]})
        r["field"] = "/field?" + urlencode({"s": r["sample_id"], "c": r["cell_id"]})
        out.setdefault(name, []).append(r)
    return [{"name": n, "cells": out[n]} for n, _ in order if n in out], pages, page_no


def _pct(v) -> str:
    return "" if v is None or v != v else f"{float(v):.1f}"
