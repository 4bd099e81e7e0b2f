"""The pages a person opens (/docs, /redoc, /ui) and the read-only views /ui draws (/codec,
/slots, /evictions/next), through the app (TestClient). The browser itself: test_browser.py.

Offline: no page references a URL on another host, and every asset a page references (src,
href, Swagger UI's spec url, and the files the bank page's script asks for) answers 200 from the
app itself."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

from model.checkpoint import item_shape, read_metadata, save_idrp
from model.testing import tiny_idrp
from service.routes.ui import REDOC_LOGO
from service.settings import Settings
from tests.conftest import running

BASE = "http://testserver"
FULL, READ = "full-key-0123456789abcdef", "read-key-0123456789abcdef"
URL = re.compile(r"""\bhttps?://[^\s"'<>)`]+""")
WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


class _Refs(HTMLParser):
    """The URLs an HTML page makes the browser fetch: src and href attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "spec-url") and value:
                self.refs.append(value)


def page_refs(html: str) -> list[str]:
    parser = _Refs()
    parser.feed(html)
    return parser.refs + re.findall(r"""\burl: ?['"]([^'"]+)['"]""", html)  # Swagger UI's spec


def elsewhere(text: str) -> list[str]:
    """Every http(s) URL in text whose host is not the app's."""
    return [u for u in URL.findall(text) if urlsplit(u).netloc != urlsplit(BASE).netloc]


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/ui"])
def test_pages_are_offline(client: TestClient, page: str) -> None:
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert elsewhere(r.text) == []
    refs = page_refs(r.text)
    assert refs, "a page with no assets is not the page"
    for ref in refs:
        url = urljoin(BASE + page, ref)
        assert urlsplit(url).netloc == "testserver", ref
        got = client.get(url)
        assert got.status_code == 200, f"{page} references {ref}: {got.status_code}"
        assert got.content, ref


def test_ui_files_reference_no_other_host(client: TestClient) -> None:
    """The page's own script and style: no URL at all; what the script fetches is the API."""
    html = client.get("/ui").text
    own = [r for r in page_refs(html) if r.startswith("/ui/static/")]
    assert sorted(own) == ["/ui/static/app.css", "/ui/static/app.js"]
    for ref in own:
        assert URL.findall(client.get(ref).text) == [], ref
    script = client.get("/ui/static/app.js").text
    assert "X-API-Key" in script and "sessionStorage" in script
    called = set(re.findall(r"""api\(\s*[`"](/[a-z/]+)""", script))
    assert called == {"/codec", "/stats", "/slots", "/slots/", "/evictions/next", "/read"}


def test_ui_policy_allows_only_this_origin(client: TestClient) -> None:
    policy = client.get("/ui").headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "http" not in policy and "unsafe-inline" not in policy


def test_redoc_bundle_loses_only_its_cdn_logo(client: TestClient) -> None:
    from service.routes.ui import DOCS_ASSETS

    served = client.get("/static/docs/redoc.standalone.js").content
    original = (DOCS_ASSETS / "redoc.standalone.js").read_bytes()
    assert REDOC_LOGO in original and REDOC_LOGO not in served
    assert served == original.replace(REDOC_LOGO, b"data:,")


def test_docs_pages_use_the_apps_assets(client: TestClient) -> None:
    docs, redoc = client.get("/docs").text, client.get("/redoc").text
    assert "/static/docs/swagger-ui-bundle.js" in docs and '"validatorUrl": null' in docs
    assert "/static/docs/redoc.standalone.js" in redoc
    assert client.get("/docs/oauth2-redirect").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/codec", "/slots", "/evictions/next"} <= set(paths)
    assert not {"/docs", "/redoc", "/ui"} & set(paths)


def test_keys_pages_open_api_closed(make_settings: Callable[..., Settings]) -> None:
    """With keys: the pages and their files need none (as FastAPI's /docs always did), the
    views need one, a read-only key may look and is refused a delete."""
    with running(make_settings(api_key=FULL, read_api_key=READ)) as c:
        for page in ("/docs", "/redoc", "/ui", "/openapi.json", "/ui/static/app.js"):
            assert c.get(page).status_code == 200, page
        for view in ("/codec", "/slots", "/evictions/next"):
            assert c.get(view).status_code == 401, view
            assert c.get(view, headers={"X-API-Key": READ}).status_code == 200, view
        full, read = {"X-API-Key": FULL}, {"X-API-Key": READ}
        assert c.post("/write", json={"items": [[0.5] * 64]}, headers=full).status_code == 200
        r = c.delete("/slots/0", headers=read)
        assert r.status_code == 403 and r.json() == {"detail": "this API key is read-only"}
        assert c.get("/slots/0", headers=read).status_code == 200


def test_codec_shape(client: TestClient) -> None:
    # the conftest weights carry no "shape": d = 64 = 8 * 8 gives an image of 8x8
    body = client.get("/codec").json()
    assert body | {"fingerprint": ""} == {
        "model": "tiny-m16",
        "fingerprint": "",
        "d": 64,
        "m": 16,
        "shape": [8, 8],
        "kind": "image",
    }


def test_codec_shape_stored(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    path = tmp_path / "strip.safetensors"
    save_idrp(tiny_idrp(d=64, m=16), path, shape=(4, 16))
    assert json.loads(read_metadata(path)["shape"]) == [4, 16]
    with running(make_settings(weights=path)) as c:
        assert c.get("/codec").json()["shape"] == [4, 16]
    with pytest.raises(ValueError, match="d=64"):
        save_idrp(tiny_idrp(d=64, m=16), tmp_path / "bad.safetensors", shape=(7, 9))


@pytest.mark.parametrize(
    ("weights", "shape"),
    [
        ("digits-m16", (8, 8)),
        ("mnist-m16", (28, 28)),
    ],
)
def test_item_shape_of_shipped_weights(weights: str, shape: tuple[int, ...]) -> None:
    """Weights saved before the shape was stored: derived from d and the training facts."""
    meta = read_metadata(WEIGHTS / f"{weights}.safetensors")
    d = json.loads(meta["config"])["d"]
    assert item_shape(meta, d) == shape


def test_item_shape_fallbacks() -> None:
    assert item_shape({}, 64) == (8, 8)
    assert item_shape({}, 784) == (28, 28)
    assert item_shape({}, 100) == (10, 10)
    assert item_shape({}, 96) == (96,)
    assert item_shape({"info": json.dumps({"embedder": {"dim": 64}})}, 64) == (64,)  # text
    assert item_shape({"info": json.dumps({"embedder": {"dim": 384}})}, 384) == (384,)
    assert item_shape({"shape": "[2, 32]"}, 64) == (2, 32)
    assert item_shape({"shape": "[3, 3]"}, 64) == (8, 8)  # not d values: ignored
    assert item_shape({"shape": "junk", "info": "junk"}, 64) == (8, 8)


def _write(client: TestClient, items: list[list[float]]) -> list[int]:
    r = client.post("/write", json={"items": items, "mode": "each"})
    assert r.status_code == 200, r.text
    return list(r.json()["slots"])


def test_slot_listing_orders_and_pages(
    client: TestClient, items: Callable[..., list[list[float]]]
) -> None:
    empty = client.get("/slots").json()
    assert empty == {"total": 0, "offset": 0, "limit": 100, "order": "slot", "tick": 0, "slots": []}
    rows = items(6)
    assert _write(client, rows) == list(range(6))
    for slot, reads in ((4, 3), (1, 2), (2, 1)):
        for _ in range(reads):
            client.post("/read", json={"queries": [rows[slot]], "top_k": 1})
    client.delete("/slots/0")
    stats_before = client.get("/stats").json()

    by_slot = client.get("/slots").json()
    assert [s["slot"] for s in by_slot["slots"]] == [1, 2, 3, 4, 5]
    assert by_slot["total"] == 5 and by_slot["tick"] == 1 + 6 + 1
    for s in by_slot["slots"]:
        view = client.get(f"/slots/{s['slot']}").json()
        assert s == {k: view[k] for k in ("slot", "count", "last_write", "last_access")}
    by_count = client.get("/slots", params={"order": "count"}).json()["slots"]
    assert [(s["slot"], s["count"]) for s in by_count] == [(4, 3), (1, 2), (2, 1), (3, 0), (5, 0)]
    recent = client.get("/slots", params={"order": "recent"}).json()["slots"]
    assert [s["slot"] for s in recent] == [2, 1, 4, 3, 5]  # last read first; unread ties by slot
    page = client.get("/slots", params={"order": "count", "offset": 1, "limit": 2}).json()
    assert [s["slot"] for s in page["slots"]] == [1, 2] and page["total"] == 5
    assert client.get("/slots", params={"offset": 99}).json()["slots"] == []
    # not an access: nothing moved
    assert client.get("/stats").json() | {"uptime_s": 0} == stats_before | {"uptime_s": 0}


@pytest.mark.parametrize(
    "params",
    [{"order": "lru"}, {"limit": 0}, {"limit": 1001}, {"offset": -1}, {"offset": "x"}],
)
def test_slot_listing_refuses(client: TestClient, params: dict[str, object]) -> None:
    r = client.get("/slots", params=params)
    assert r.status_code == 422 and r.json()["detail"].startswith("query parameter")


def test_next_eviction_is_the_next_write(
    make_settings: Callable[..., Settings], items: Callable[..., list[list[float]]]
) -> None:
    with running(make_settings(capacity=4)) as c:
        assert c.get("/evictions/next").json() == {
            "n": 1,
            "slots": [0],
            "evicted": [],
            "next": None,
        }
        rows = items(5)
        _write(c, rows[:4])
        for slot in (0, 2, 3):
            c.post("/read", json={"queries": [rows[slot]], "top_k": 1})
        plan = c.get("/evictions/next").json()
        assert plan["slots"] == plan["evicted"] == [1]
        assert plan["next"] == {"slot": 1, "count": 0, "last_write": 1, "last_access": 0}
        two = c.get("/evictions/next", params={"n": 2}).json()
        assert two["slots"][0] == 1 and len(two["evicted"]) == 2
        assert c.get("/evictions/next").json() == plan  # asking changes nothing
        out = c.post("/write", json={"items": [rows[4]]}).json()
        assert out["slots"] == out["evicted"] == plan["evicted"]
        c.delete("/slots/2")
        assert c.get("/evictions/next").json()["slots"] == [2]
        r = c.get("/evictions/next", params={"n": 5})
        assert r.status_code == 422 and "capacity=4" in r.json()["detail"]
