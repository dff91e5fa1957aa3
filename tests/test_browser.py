"""Neo4j Browser in real headless Chromium: it connects to a local server started with circuitshift's
Browser settings, which loads the style sheet and opens the guide on connect; a guide query then shows
the styled before/after difference, and a screenshot is saved under artifacts/.

Chromium is Debian's `chromium` package, driven over the DevTools protocol on a pipe (tests/cdp.py);
nothing is downloaded. The test skips only when no `chromium` is installed (CI installs it).
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from cdp import Chromium, find_chromium
from conftest import REPO
from explore_data import write_demo
from ingest.browser_assets import AssetServer, asset_bytes, browser_settings
from queries import exploration as X
from queries.cypher import guide as G
from queries.cypher import views as V
from queries.api import CircuitDefinition, Store

ARTIFACTS = REPO / "artifacts"
IN_GRAPH = CircuitDefinition()


# -- without a browser ------------------------------------------------------------------------------

def test_assets_served_with_cors():
    server = AssetServer().start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        req = urllib.request.Request(base + "/style.grass", headers={"Origin": "http://127.0.0.1:7474"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            assert resp.read() == asset_bytes("style.grass")
        # Browser fetches guides with pragma/cache-control headers: a preflight must pass.
        pre = urllib.request.Request(base + "/guide.html", method="OPTIONS", headers={
            "Origin": "http://127.0.0.1:7474", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "pragma,cache-control"})
        with urllib.request.urlopen(pre, timeout=5) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Headers"] == "*"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(base + "/../pyproject.toml", timeout=5)
    finally:
        server.stop()
    conf = browser_settings(server.port)
    assert conf["browser.post_connect_cmd"] == (f"style http://localhost:{server.port}/style.grass; "
                                                f"play http://localhost:{server.port}/guide.html")


def test_guide_is_generated_from_the_statements():
    assert asset_bytes("guide.html").decode() == X.guide_html(), \
        "the served guide must be generated from queries/cypher/guide.py (queries.exploration.guide_html)"
    grass = asset_bytes("style.grass").decode()
    for rule in ["node.Attn", "node.MLP", "node.Input", "node.Logits", "node.Deg5",
                 "relationship.ADDED_4", "relationship.REMOVED_1", "relationship.KEPT_2"]:
        assert rule + " {" in grass


def test_guide_queries_answer_like_the_library(db):
    driver, database = db
    write_demo(driver, database)
    store = Store(driver, database)
    churn = store.churn("demo", IN_GRAPH)["transitions"]
    guide = store.read(G.GUIDE_CHURN, run="demo")
    assert [(g["from_step"], g["to_step"], g["edges_added"], g["edges_removed"], g["nodes_added"],
             g["nodes_removed"]) for g in guide] == \
        [(t["from_step"], t["to_step"], t["edges_added"], t["edges_removed"], t["nodes_added"],
          t["nodes_removed"]) for t in churn]
    crit = store.critical_layers("demo:0", "demo:40", IN_GRAPH, top=4)
    guide = store.read(G.GUIDE_CRITICAL_LAYERS, run="demo", a=0, b=40)
    assert [g["layer"] for g in guide] == crit["all_layers"][:5]
    assert [g["delta"] for g in guide] == pytest.approx(crit["all_deltas"][:5])
    ov = store.overlap("demo:0", "demo:40", IN_GRAPH, [10, 40])["overlap"]
    guide = {g["k"]: g["overlap"] for g in store.read(G.GUIDE_OVERLAP, run="demo", a=0, run2="demo", b2=40)}
    assert guide[10] == ov[0]["overlap"] and guide[50] == ov[1]["overlap"]  # 40-edge circuits


def test_diff_view_matches_the_diff_query(db):
    driver, database = db
    write_demo(driver, database)
    store = Store(driver, database)
    diff = store.diff("demo:0", "demo:40", IN_GRAPH, 95.0)
    for pct in (95.0, 50.0):
        out = X.write_diff_view(driver, database, "demo:0", "demo:40", IN_GRAPH, pct)
        assert out["view"] == "demo:0..demo:40"
    out = X.write_diff_view(driver, database, "demo:0", "demo:40", IN_GRAPH, 95.0)  # replaces
    rows = store.read(V.VIEW_SUMMARY, view="demo:0..demo:40")
    assert len(rows) == out["edges"]
    assert sorted(r["name"] for r in rows if r["status"] == "added") == diff["added_edges"]
    assert sorted(r["name"] for r in rows if r["status"] == "removed") == diff["removed_edges"]
    assert out["kept"] == diff["kept_b"] - diff["edges_added"]
    for r in rows:
        assert r["type"] == f"{r['status'].upper()}_{r['type'][-1]}"
    nodes = store.read("MATCH (n:ViewNode {view: $v}) RETURN n.name AS name, n.degree AS degree, "
                       "labels(n) AS labels", v="demo:0..demo:40")
    assert {n["name"] for n in nodes} == {r["src"] for r in rows} | {r["dst"] for r in rows}
    for n in nodes:
        assert X.degree_label(n["degree"]) in n["labels"]
        assert n["degree"] == sum((r["src"] == n["name"]) + (r["dst"] == n["name"]) for r in rows)


# -- in Chromium -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser_server(tmp_path_factory):
    from queries.connection import open_driver, set_initial_password
    from queries.schema import ensure_schema
    from queries.server.local import LocalServer, free_port
    from queries.settings import Neo4jSettings

    assets = AssetServer().start()
    home = tmp_path_factory.mktemp("neo4j-browser-home")
    server = LocalServer(home, bolt_port=free_port(), http_port=free_port(), heap="512m",
                         extra_conf={**browser_settings(assets.port),
                                     "server.memory.pagecache.size": "64m"})
    try:
        status = server.start(timeout=180)
        password = secrets.token_urlsafe(16)
        set_initial_password(status.bolt_uri, password)
        driver = open_driver(Neo4jSettings(uri=status.bolt_uri, password=password))
        ensure_schema(driver, "neo4j")
        write_demo(driver, "neo4j")
        X.write_diff_view(driver, "neo4j", "demo:0", "demo:10", IN_GRAPH, 50.0)
        yield status, password, driver
        driver.close()
    finally:
        server.stop()
        assets.stop()


_SET_INPUT = """(() => {
  const set = (sel, v) => { const el = document.querySelector(sel);
    Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(el, v);
    el.dispatchEvent(new Event('input', {bubbles: true})); el.dispatchEvent(new Event('change', {bubbles: true})); };
  set('[data-testid=username]', 'neo4j'); set('[data-testid=password]', %s);
  document.querySelector('[data-testid=connect]').click(); return true; })()"""

# Click the play icon of the guide's runnable block whose text starts with `prefix`.
_RUN_BLOCK = """(() => {
  const pres = Array.from(document.querySelectorAll('pre.runnable'));
  const pre = pres.find(p => p.textContent.replace(/^\\s+/, '').startsWith(%s));
  if (!pre) return false;
  pre.querySelector('i').click(); return true; })()"""

_GRAPH = """(() => {
  const svgs = Array.from(document.querySelectorAll('svg')).filter(s => s.querySelector('g.node'));
  if (!svgs.length) return null;
  const svg = svgs[svgs.length - 1];
  const nodes = Array.from(svg.querySelectorAll('g.node')).map(g => {
    const c = g.querySelector('circle.b-outline') || g.querySelector('circle');
    return {fill: c.getAttribute('fill'), r: parseFloat(c.getAttribute('r')),
            text: Array.from(g.querySelectorAll('text')).map(t => t.textContent).join('')}; });
  const rels = Array.from(svg.querySelectorAll('g.relationship')).map(g => {
    const p = g.querySelector('path.b-outline') || g.querySelector('path');
    return {fill: p.getAttribute('fill'), stroke: p.getAttribute('stroke')}; });
  const frame = svg.closest('[data-testid=frame]').getBoundingClientRect();
  return {nodes, rels, clip: {x: frame.x, y: frame.y, width: frame.width, height: frame.height}};
})()"""


def test_browser_connects_runs_the_guide_and_shows_the_styled_circuit(browser_server):
    exe = find_chromium()
    if exe is None:
        pytest.skip("Debian's `chromium` is not installed (apt-get install chromium); CI installs it")
    status, password, driver = browser_server
    ARTIFACTS.mkdir(exist_ok=True)
    chrome = Chromium(exe)
    try:
        chrome.open_page()
        chrome.navigate(f"{status.browser_url}?dbms=neo4j://127.0.0.1:{status.bolt_port}")
        chrome.wait_for("!!document.querySelector('[data-testid=password]')", timeout=120)
        chrome.evaluate(_SET_INPUT % json.dumps(password))
        # post_connect_cmd: the style sheet is applied and the guide opens, without typing anything.
        chrome.wait_for("document.querySelectorAll('pre.runnable').length >= 2", timeout=60)
        commands = chrome.evaluate(
            "Array.from(document.querySelectorAll('[data-testid=frameCommand]')).map(e => e.textContent)")
        assert any(c.startswith(":style http://localhost:") for c in commands), commands
        assert any(c.startswith(":play http://localhost:") for c in commands), commands
        # The guide's first slide sets the parameters; then its "difference" slide query runs.
        assert chrome.evaluate(_RUN_BLOCK % json.dumps(":param"))
        chrome.wait_for("Array.from(document.querySelectorAll('[data-testid=frameCommand]'))"
                        ".some(e => e.textContent.startsWith(':param'))", timeout=30)
        driver.execute_query(V.DELETE_VIEW, view="demo:0..demo:10", database_="neo4j")
        X.write_diff_view(driver, "neo4j", "demo:0", "demo:10", IN_GRAPH, 50.0)
        view_block = _RUN_BLOCK % json.dumps(G.GUIDE_VIEW.strip()[:40])
        for _ in range(len(X.GUIDE_SLIDES)):  # page through the guide to the difference slide
            if chrome.evaluate(view_block):
                break
            chrome.evaluate("document.querySelector('.next-slide').click()")
            time.sleep(0.3)
        else:
            raise AssertionError("the guide has no slide with the difference view query")
        graph = chrome.wait_for(_GRAPH.replace("if (!svgs.length) return null;",
                                               "if (!svgs.length) return null; "
                                               "if (svgs[svgs.length-1].querySelectorAll('g.relationship')"
                                               ".length < 2) return null;"), timeout=60)
        time.sleep(3)  # let the force layout settle before the picture
        graph = chrome.evaluate(_GRAPH)
        shot = ARTIFACTS / "browser-circuit.png"
        clip = graph["clip"]
        chrome.screenshot(str(shot), clip=clip if clip["width"] > 100 and clip["height"] > 100 else None)
    except Exception:
        chrome.screenshot(str(ARTIFACTS / "browser-failure.png"))  # what the page showed
        raise
    finally:
        chrome.close()
    rows = Store(driver, "neo4j").read(V.VIEW_SUMMARY, view="demo:0..demo:10")
    names = {r["src"] for r in rows} | {r["dst"] for r in rows}
    # Styled: components coloured by kind, captioned with their names, sized by degree; edges
    # coloured by added / removed / kept.
    kind_colour = {"Input": "#2A2C34", "Attn": "#F2B134", "MLP": "#6DBE8D", "Logits": "#7E57C2"}
    for n in graph["nodes"]:
        n["text"] = n["text"].strip()
    assert {n["text"] for n in graph["nodes"]} == names
    for n in graph["nodes"]:
        kind = ("Input" if n["text"] == "input" else "Logits" if n["text"] == "logits"
                else "MLP" if n["text"].startswith("m") else "Attn")
        assert n["fill"].upper() == kind_colour[kind], n
    assert len({n["r"] for n in graph["nodes"]}) > 1  # sizes differ (degree buckets)
    colours = {(r["fill"] or r["stroke"] or "").upper() for r in graph["rels"]}
    want = {"added": "#104670", "removed": "#E47159", "kept": "#A5ABB6"}
    assert {want[r["status"]] for r in rows} <= colours, colours
    assert shot.stat().st_size > 10_000
