"""The search page and the eval report in headless Chromium against a real `udrl serve`.

The workspace is tiny: the random-weight GPT-2 of tests/conftest.py, the session's intent
model, a generated 12-image / 40-template catalogue indexed with the tiny CLIP and MiniLM.
The query's prompts are precomputed, so the page shows the path a served cache hit takes.
Skips only where Chromium (or Selenium) is missing.
"""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from plugin.cli import main
from plugin.offline.retrieval_eval import EvalConfig, evaluate_modes
from plugin.rewrite import write_precomputed
from plugin.offline.trec import EvalQuery

from .browser import MISSING_BROWSER, RENDERED_LISTS, find_chromium, served, wait_for

pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[dev]'")
if find_chromium() is None:
    pytest.skip(MISSING_BROWSER, allow_module_level=True)

KEY = "browser-test-key"
QUERY = "red cabin photo"
PROMPTS = {"image": "red wooden cabin photo in snow", "template": "red cabin photo flyer"}
CONFIG = """
[generation]
image_length = 6
template_length = 4
[index]
clip_model = "udrl-tiny-clip"
clip_pretrained = "none"
[pipeline]
engine = "torch"
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir, tiny_rewriter, intent_detector):
    ws = tmp_path_factory.mktemp("web-ws")
    config = ws / "udrl.toml"
    config.write_text(CONFIG)
    shutil.copytree(tiny_model_dir, ws / "rewriter")
    intent_detector.save(ws / "intent")
    base = ["--config", str(config), "--workspace", str(ws)]
    for argv in (["catalog", str(ws / "catalog"), "--images", "12", "--templates", "40"],
                 ["index", "images", str(ws / "catalog" / "images.jsonl")],
                 ["index", "templates", str(ws / "catalog" / "templates.jsonl")]):
        assert main(base + argv) == 0, argv
    write_precomputed(ws / "rewrites.jsonl", [
        {"query": QUERY, "task": task, "length": len(prompt.split()), "relevance": 4,
         "model_version": tiny_rewriter.version, "prompts": [prompt]}
        for task, prompt in PROMPTS.items()])
    return ws


@pytest.fixture(scope="module")
def browser():
    from .browser import start_browser

    driver = start_browser()
    yield driver
    driver.quit()


def test_search_page_shows_what_the_api_returns(workspace, browser, tmp_path):
    from selenium.webdriver.common.by import By

    with served(workspace, workspace / "udrl.toml", {"UDRL_SERVICE__API_KEY": KEY}) as url:
        browser.get(url + "/")
        # the service has a key: the page asks for it before anything else
        wait_for(browser, "return !document.getElementById('key-panel').hidden",
                 what="the API-key prompt")
        browser.find_element(By.ID, "key").send_keys("wrong key")
        browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
        browser.find_element(By.ID, "q").send_keys(QUERY)
        browser.find_element(By.ID, "go").click()
        refused = wait_for(browser, "const e = document.getElementById('key-error'); "
                                    "return !e.hidden && e.textContent", what="the 401 message")
        assert "refused" in refused
        browser.find_element(By.ID, "key").send_keys(KEY)
        browser.find_element(By.CSS_SELECTOR, "#key-form button").click()  # searches again
        wait_for(browser, "return document.querySelectorAll('li.hit').length > 0",
                 what="the results")
        assert browser.execute_script(
            "return [sessionStorage.getItem('udrl.apiKey'), localStorage.length, "
            "document.cookie]") == [KEY, 0, ""]

        body = {"query": QUERY, "lists": True, "fusion": True, "k": 10}
        api = httpx.post(url + "/v1/search", json=body, headers={"X-API-Key": KEY},
                         timeout=60).json()
        shown = {s["task"]: s["lists"] for s in browser.execute_script(RENDERED_LISTS)}
        assert list(shown) == [m["task"] for m in api["modalities"]] == api["rewrite"]["tasks"]
        for m in api["modalities"]:
            want = {c: [h["id"] for h in hits] for c, hits in m["lists"].items()}
            want["fused"] = [r["id"] for r in m["results"]]
            assert shown[m["task"]] == want
            assert {"raw", "rewrite", "fused"} <= set(want) and all(want.values())
            prompt = next(p for p in api["rewrite"]["prompts"] if p["task"] == m["task"])
            assert prompt["prompt"] == PROMPTS[m["task"]] and prompt["source"] == "precomputed"
            section = f"section.modality[data-task={m['task']}]"
            assert browser.find_element(By.CSS_SELECTOR, f"{section} q").text.strip(
                '"“”') == prompt["prompt"]
            words = browser.find_element(By.CSS_SELECTOR, f"{section} .words")
            assert words.text == f"{prompt['words']} words · asked {prompt['command']['length']}"
        probs = browser.execute_script(
            "return Array.from(document.querySelectorAll('.prob')).map(p => p.dataset.intent)")
        assert probs == list(api["rewrite"]["probs"])
        stages = browser.execute_script(
            "return Array.from(document.querySelectorAll('#timings tr')).map(r => r.dataset.stage)")
        assert set(stages) == set(api["timings_ms"])

        if "image" in shown:
            wait_for(browser, "return Array.from(document.querySelectorAll('img.thumb'))"
                              ".some(i => i.complete && i.naturalWidth > 0)", what="a thumbnail")
        else:  # intent sent the query to templates only: ask for images too
            browser.find_element(By.CSS_SELECTOR, "#task option[value=image]").click()
            browser.find_element(By.ID, "go").click()
            wait_for(browser, "return Array.from(document.querySelectorAll('img.thumb'))"
                              ".some(i => i.complete && i.naturalWidth > 0)", what="a thumbnail")
        browser.save_screenshot(str(tmp_path / "search-page.png"))
    assert (tmp_path / "search-page.png").read_bytes()[:4] == b"\x89PNG"


def test_report_sorts_by_change_and_lists_the_most_hurt(browser, tmp_path):
    from selenium.webdriver.common.by import By

    # 16 queries, one relevant doc each. raw finds it at rank 1 (RR 1) for q00-q06 and at
    # rank 2 (RR 0.5) for the rest; rewrite finds it at rank 1 + i % 5 (RR 1, 1/2, ..., 1/5).
    # The change of MRR, rewrite − raw: q10 and q15 gain 0.5, q00, q05 and q11 are unchanged,
    # the other 11 are hurt (q04 most: 0.2 − 1 = −0.8), so the button shows 10 of 11.
    queries = [EvalQuery(f"q{i:02d}", f"query {i}") for i in range(16)]
    qrels = {q.qid: {f"rel{i}": 1} for i, q in enumerate(queries)}
    pad = [(f"other{j}", 0.0) for j in range(4)]

    def search(q, mode):
        i = int(q.qid[1:])
        at = (0 if i < 7 else 1) if mode == "raw" else i % 5
        return pad[:at] + [(f"rel{i}", 1.0)] + pad[at:]

    rep = evaluate_modes(queries, qrels, search, ["raw", "rewrite"], tmp_path,
                         EvalConfig(metrics=("mrr",)), progress=False)
    delta = {q.qid: 1 / (1 + int(q.qid[1:]) % 5) - (1.0 if int(q.qid[1:]) < 7 else 0.5)
             for q in queries}
    assert rep["deltas"]["rewrite"]["worsened"] == sum(d < 0 for d in delta.values()) == 11

    browser.get((tmp_path / "report.html").as_uri())
    order = "return Array.from(document.querySelectorAll('#queries tbody tr'))" \
            ".filter(r => !r.hidden).map(r => r.dataset.qid)"
    assert browser.execute_script(order) == [q.qid for q in queries]
    sort = browser.find_element(By.XPATH, "//th/button[normalize-space()='Δ rewrite']")
    sort.click()
    ascending = browser.execute_script(order)
    assert ascending == sorted(delta, key=lambda q: (delta[q], q))
    sort.click()
    assert browser.execute_script(order) == sorted(delta, key=lambda q: (-delta[q], q))
    browser.find_element(By.XPATH, "//button[normalize-space()='10 most hurt by rewrite']").click()
    assert browser.execute_script(order) == ascending[:10]
    assert "10 queries rewrite hurt most (of 11 hurt)" in browser.find_element(
        By.ID, "shown").text
    browser.save_screenshot(str(tmp_path / "eval-report.png"))
    assert json.loads((tmp_path / "report.json").read_text())["files"]["html"].endswith(
        "report.html")
