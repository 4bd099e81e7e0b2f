"""What a person opens in a browser, all served by the app itself (no CDN, no build step):

- /docs (Swagger UI) and /redoc (ReDoc), from the assets the PyPI package fastapi-offline ships
  (its static folder, mounted at /static/docs), so they work on a machine without internet. As
  FastAPI's own pages, they and /openapi.json need no key; the API calls made from them do.
  ReDoc's bundle draws its attribution logo from its vendor's CDN: /static/docs/redoc.standalone.js
  is the package's file with that one address replaced by nothing (the logo then hides itself),
  so no page here asks another host for anything.
- /ui: a live page of the bank (service/ui/index.html, app.js, app.css, mounted at /ui/static):
  /stats, the occupied slots drawn from GET /slots/{i}, the next eviction, a query box. The page
  and its files need no key; it asks for one when the API answers 401 and sends it in the
  X-API-Key header (kept in the tab's sessionStorage, never in a URL). Its Content-Security-Policy
  allows nothing but this origin.

`install(app)` adds them; create_app builds the app with FastAPI's CDN pages turned off.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
DOCS_ASSETS = Path(str(files("fastapi_offline") / "static"))
DOCS_STATIC = "/static/docs"
UI_STATIC = "/ui/static"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"
# The page's own files only: no inline script, no other host; canvases read back as data.
UI_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'self'"
)

REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"  # an <img> with onError -> hidden

router = APIRouter(include_in_schema=False)


@cache
def _redoc_js() -> bytes:
    return (DOCS_ASSETS / "redoc.standalone.js").read_bytes().replace(REDOC_LOGO, b"data:,")


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _docs_page(request: Request) -> tuple[str, str, str]:
    """A docs page's spec URL, title and asset folder URL, under the app's root path."""
    root = _root(request)
    return f"{root}{request.app.openapi_url}", request.app.title, f"{root}{DOCS_STATIC}"


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    spec, title, assets = _docs_page(request)
    return get_swagger_ui_html(
        openapi_url=spec,
        title=f"{title} - Swagger UI",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon.png",
        oauth2_redirect_url=f"{_root(request)}{OAUTH2_REDIRECT}",
        # no spec validator badge: Swagger UI would send the document to an outside validator
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get(OAUTH2_REDIRECT)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    spec, title, assets = _docs_page(request)
    return get_redoc_html(
        openapi_url=spec,
        title=f"{title} - ReDoc",
        redoc_js_url=f"{assets}/redoc.standalone.js",
        redoc_favicon_url=f"{assets}/favicon.png",
        with_google_fonts=False,
    )


@router.get(f"{DOCS_STATIC}/redoc.standalone.js")
async def redoc_js() -> Response:
    return Response(_redoc_js(), media_type="text/javascript; charset=utf-8")


@router.get("/ui")
async def ui(request: Request) -> HTMLResponse:
    """The bank's web page (its data come from the API, with the key the page asks for)."""
    page = (UI_DIR / "index.html").read_text(encoding="utf-8").replace("{root}", _root(request))
    return HTMLResponse(
        page, headers={"Content-Security-Policy": UI_CSP, "Cache-Control": "no-cache"}
    )


def install(app: FastAPI) -> None:
    """The docs pages, the bank's page and their static files (none needs a key)."""
    app.include_router(router)
    app.mount(DOCS_STATIC, StaticFiles(directory=DOCS_ASSETS), name="docs-static")
    app.mount(UI_STATIC, StaticFiles(directory=UI_DIR / "static"), name="ui-static")
