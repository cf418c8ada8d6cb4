"""The results page (fishtune.report): built from a small synthetic runs folder, it embeds the runs'
data, asks no server for anything, lists failed and damaged files, and (in headless Chromium, marker
`browser`) renders its tables, figures and a clicked run's curves without a network request."""
import json
import math
import re
from html import unescape
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from fishtune.reports.report import PLOTLY_VERSION, build_page, main, write_report
from fishtune.harness.results import RunResult, mask_path, save_mask_file
from conftest import plain_holm
from results_factory import make_result, write_failure, write_result

ROOT = Path(__file__).resolve().parent.parent
STUDY_RUNS = ROOT / "results" / "study" / "runs"
LABELS = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1, 0, 1]


def result(model="minilm", method="lora", task="sst2", mask="none", budget=1, seed=1, score=70.0,
           **extra) -> RunResult:
    """A result as fishtune.run writes it (tests/results_factory.py), with the dev predictions and
    config the page must leave out."""
    run_id = f"{model}-{task}-{method}-L2-r1-{mask}-b{budget}-s{seed}"
    history = [{"epoch": e, "train_loss": 0.7 - 0.05 * e, "dev_loss": 0.69 - 0.03 * e,
                "metrics": {"accuracy": score - 3 + e, "score": score - 3 + e}, "score": score - 3 + e}
               for e in (1, 2, 3)]
    predictions = [(label if (i + seed) % 4 else 1 - label) for i, label in enumerate(LABELS)]
    return make_result(**{**dict(
        run_id=run_id, config={"secret_config_marker": 1}, model=model, task=task, method=method, layers=2, rank=1,
        mask=mask, budget=budget, seed=seed, trainable=300, total=10_000, ratio_pct=3.0, budget_ratio_pct=3.0,
        lr=5e-3, history=history, throughput=[{"epoch": e, "samples_per_second": 40.0 + e} for e in (1, 2, 3)],
        best={"epoch": 3, "score": score, "metrics": {"accuracy": score}, "dev_loss": 0.6},
        dev_labels=LABELS, dev_predictions=predictions, fisher_seconds=1.5, train_seconds=20.0 + seed,
        samples_per_second=40.0, precision="fp32"), **extra})


def placement(first_layer_share: int) -> list[dict]:
    return [{"name": "bert.encoder.layer.0.attention.self.query.lora_A.default.weight", "layer": 0,
             "module": "query.lora_A", "chosen": first_layer_share, "entries": 384},
            {"name": "bert.encoder.layer.1.attention.self.query.lora_A.default.weight", "layer": 1,
             "module": "query.lora_A", "chosen": 100 - first_layer_share, "entries": 384},
            {"name": "classifier.weight", "layer": None, "module": "other", "chosen": 20, "entries": 20}]


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    """A study-like group (none, fish, rand on SST-2 at budget 1, three seeds; fish and rand with their
    placement and peak memory), one run of another model and method that saved only a mask file, a
    failed run and a damaged file."""
    runs = tmp_path / "runs"
    for seed in (1, 2, 3):
        for mask, score in (("none", 70.0), ("fish", 72.0 + seed), ("rand", 71.0)):
            extra = {"placement": placement(80 if mask == "fish" else 50), "peak_memory_mb": 500.0 + seed,
                     "tokens_per_second": 900.0} if mask != "none" else {}
            r = result(mask=mask, seed=seed, score=score + 0.1 * seed, **extra)
            write_result(runs / "study", r)
    other = result(model="tiny_bert", method="adapter", task="rte", mask="fish", seed=1, score=55.0)
    write_result(runs / "quick", other)
    save_mask_file(mask_path(runs / "quick" / f"{other.run_id}.json"),
                   {"bert.encoder.layer.3.output.adapter.down.weight": torch.tensor([True, False, True])})
    write_failure(runs / "quick" / "tiny_bert-rte-adapter-L2-fish-b2-s2.failed.json",
                  reason="diverged: non-finite loss at epoch 3, step 7", error="Diverged: loss is nan", traceback="...")
    (runs / "quick" / "tiny_bert-rte-adapter-L2-rand-b1-s1.json").write_text('{"schema": 1, "run_id": "cut')
    return runs


def page_data(html: str) -> dict:
    blob = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S).group(1)
    return json.loads(blob)


def test_page_embeds_the_runs_and_lists_failed_and_damaged_files(runs_dir):
    html = build_page(runs_dir, n_resamples=20)
    data = page_data(html)
    assert {r["run_id"] for r in data["runs"]} == {
        *(f"minilm-sst2-lora-L2-r1-{m}-b1-s{s}" for m in ("none", "fish", "rand") for s in (1, 2, 3)),
        "tiny_bert-rte-adapter-L2-r1-fish-b1-s1"}
    # What the page does not show stays out of it.
    assert "dev_predictions" not in html and "secret_config_marker" not in html
    # Self-contained: plotly.js inline, and no element loads anything from a URL.
    assert f"plotly.js (basic - minified) v{PLOTLY_VERSION}" in html
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=", html, re.I)
    views = {v["id"]: v for v in data["views"]}
    assert [r["path"] for r in views["failed"]["rows"]] == ["quick/tiny_bert-rte-adapter-L2-fish-b2-s2.failed.json"]
    assert views["failed"]["rows"][0]["reason"].startswith("diverged")
    assert [r["path"] for r in views["damaged"]["rows"]] == ["quick/tiny_bert-rte-adapter-L2-rand-b1-s1.json"]
    # The study-like group gets fishtune.study's tables; the other model only the generic views.
    assert data["study_groups"] == 1 and views["study-0"]["title"].endswith("minilm / lora / rank 1")
    fish = [r for r in views["study-0"]["rows"] if r["row"] == "fish" and r["task"] == "sst2"][0]
    assert fish["n"] == 3 and fish["mean"] == pytest.approx(74.2) and fish["ci_lo"] < 74.2 < fish["ci_hi"]
    baseline = [r for r in views["study-0"]["rows"] if r["row"] == "baseline" and r["task"] == "sst2"][0]
    assert baseline["mean"] == pytest.approx(100 * 8 / 12, abs=1e-4)   # majority class of LABELS
    assert {r["comparison"] for r in views["paired-1"]["rows"]} == {"fish - original", "rand - original", "fish - rand"}
    assert {(c["model"], c["mask"], c["n"]) for c in views["cells"]["rows"]} == {
        ("minilm", "none", 3), ("minilm", "fish", 3), ("minilm", "rand", 3), ("tiny_bert", "fish", 1)}
    # Placement from the result files' field and from the saved mask of the run that has no field.
    place = {(r["model"], r["mask"], r["layer"]): r["chosen"] for r in views["placement"]["rows"]}
    assert place[("minilm", "fish", 0)] == 3 * 80 and place[("minilm", "rand", 1)] == 3 * 50
    assert place[("tiny_bert", "fish", 3)] == 2
    assert "peak_memory_mb" in views["cost"]["rows"][0] or any("peak_memory_mb" in r for r in views["cost"]["rows"])


def test_a_folder_without_placement_says_so_and_the_cli_writes_the_page(tmp_path, capsys):
    runs = tmp_path / "runs"
    for mask in ("none", "fish"):
        r = result(model="tiny_llama", method="ia3", task="rte", mask=mask)
        write_result(runs, r)
    out = tmp_path / "page" / "index.html"
    main([str(runs), "--out", str(out), "--resamples", "10"])
    assert "wrote" in capsys.readouterr().out
    views = {v["id"]: v for v in page_data(out.read_text())["views"]}
    assert views["placement"]["rows"] == [] and "No mask placement" in views["placement"]["empty"]
    assert views["failed"]["rows"] == [] and views["damaged"]["rows"] == []


def test_study_groups_split_by_folder_and_learning_rate_and_leave_mixed_cells_generic():
    from fishtune.reports.report import study_groups

    runs = Path("/runs")

    def groups(results):
        for i, r in enumerate(results):
            r.path = r.path or str(runs / f"{i}.json")
        found, skipped = study_groups(results, runs)
        return sorted(found, key=str), skipped

    lr_arm = [result(mask=m, seed=s, lr=lr) for m in ("fish", "rand") for s in (1, 2) for lr in (1e-3, 2e-2)]
    assert groups(lr_arm) == ([(".", "minilm", "lora", 1, 1e-3), (".", "minilm", "lora", 1, 2e-2)], [])
    # Table 3's rows: fish on 6 and on 8 layers at one budget are no single study cell.
    found, skipped = groups([result(mask="none")] + [result(mask="fish", layers=n) for n in (6, 8)])
    assert found == [] and skipped == ["minilm / lora / rank 1: a (task, mask, budget) cell mixes layer counts"]
    # Two arms in two folders are two groups; in one folder, they are not a study.
    arms = [result(mask=m, path=str(runs / arm / f"{m}.json")) for arm in ("fp32", "bf16") for m in ("none", "fish")]
    assert groups(arms) == ([("bf16", "minilm", "lora", 1), ("fp32", "minilm", "lora", 1)], [])
    found, skipped = groups([result(mask=m) for m in ("none", "fish") for _ in (1, 2)])
    assert found == [] and "more than one run" in skipped[0]


def test_several_folders_make_one_page_of_each_folders_own_groups(runs_dir, tmp_path):
    """Two studies on one page: every run of each, keyed by its folder under the common one, and each study
    group's tables exactly those of its folder's own page."""
    other = tmp_path / "second" / "runs"
    for seed in (1, 2):
        for mask, score in (("none", 40.0), ("fish", 45.0 + seed)):
            write_result(other / "core", result(model="smollm2", task="stsb", mask=mask, seed=seed, score=score))
    alone = {p: page_data(build_page(p, n_resamples=20)) for p in (runs_dir, other)}
    both = page_data(build_page([runs_dir, other], n_resamples=20))
    assert sorted(r["path"] for r in both["runs"]) == sorted(
        f"{p.relative_to(tmp_path)}/{r['path']}" for p, data in alone.items() for r in data["runs"])
    views = {v["title"]: v["rows"] for v in both["views"]}
    for p, data in alone.items():
        for view in data["views"]:
            if view["id"].startswith(("study", "paired")):
                name = view["title"].replace(": ", f": {p.relative_to(tmp_path)}/", 1)
                assert views[name] == view["rows"], name
    assert {r["path"] for r in views[next(t for t in views if t.startswith("Failed"))]} == {
        "runs/quick/tiny_bert-rte-adapter-L2-fish-b2-s2.failed.json"}
    with pytest.raises(ValueError, match="one lies in the other"):
        build_page([runs_dir, runs_dir / "study"])


def test_an_empty_folder_still_gets_a_page(tmp_path):
    (tmp_path / "runs").mkdir()
    html = build_page(tmp_path / "runs")
    views = {v["id"]: v for v in page_data(html)["views"]}
    assert set(views) == {"in_progress", "failed", "damaged"}
    assert "No verdict: no study-like group here" in html and '<svg id="forest"' not in html


# ---- in a browser ----------------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--window-size=1400,2400",
                  # No name resolves (the driver talks to the browser on 127.0.0.1, not by name).
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost"]
OUTSIDE = re.compile(r"^(https?|wss?|ftp):", re.I)


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium through chromedriver, logging every request, downloads into tmp_path."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="no selenium: pip install -e '.[test]'")
    from selenium.webdriver.chrome.service import Service

    binary = next((b for b in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if b), None)
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip(f"no chromium: browser {binary or 'missing'}, chromedriver {driver or 'missing'} "
                    "(make test-browser installs Debian's chromium + chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # Given paths, selenium never runs its driver manager (which would go looking online).
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    yield chrome
    chrome.quit()


def requested_urls(chrome) -> list[str]:
    messages = (json.loads(e["message"])["message"] for e in chrome.get_log("performance"))
    return [m["params"]["request"]["url"] for m in messages if m["method"] == "Network.requestWillBeSent"]


def open_page(chrome, path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    chrome.get(path.as_uri())
    state = WebDriverWait(chrome, 60, poll_frequency=0.05).until(
        lambda c: c.execute_script("return document.documentElement.dataset.figures"))
    logs = [e["message"] for e in chrome.get_log("browser") if e["level"] == "SEVERE"]
    assert state == "ready", f"figures: {state}; console: {logs}"
    assert not logs, logs


@pytest.mark.browser
def test_page_renders_tables_figures_and_a_clicked_runs_curves_offline(runs_dir, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    page = write_report(runs_dir, tmp_path / "index.html", n_resamples=20)
    open_page(browser, page)
    css = browser.find_elements
    # The verdict and its forest plot come first, above every table.
    verdict, forest = browser.find_element(By.ID, "verdict"), browser.find_element(By.ID, "forest")
    assert verdict.is_displayed() and forest.is_displayed() and forest.size["height"] > 50
    assert forest.rect["y"] < browser.find_element(By.ID, "views").rect["y"]
    assert "fish − original" in verdict.text and "Holm" in verdict.text
    assert len(css(By.CSS_SELECTOR, "#runs tbody tr")) == 10
    assert len(css(By.CSS_SELECTOR, "#study-0 tbody tr")) > 0 and len(css(By.CSS_SELECTOR, "#paired-1 tbody tr")) > 0
    for figure in ("cells", "placement", "cost"):   # plotly drew each, as SVG with data in it
        assert css(By.CSS_SELECTOR, f"#{figure}-figure.js-plotly-plot svg.main-svg .trace"), figure
    assert "quick/tiny_bert-rte-adapter-L2-fish-b2-s2.failed.json" in browser.find_element(By.ID, "failed").text
    assert "quick/tiny_bert-rte-adapter-L2-rand-b1-s1.json" in browser.find_element(By.ID, "damaged").text

    # Filters: a figure follows its table; the paired table down to its significant lines, the runs to one mode.
    traces = lambda: len(css(By.CSS_SELECTOR, "#cells-figure .scatterlayer .trace"))  # noqa: E731
    before = traces()
    Select(browser.find_element(By.CSS_SELECTOR, "#cells select[data-filter=mask]")).select_by_value("fish")
    assert len(css(By.CSS_SELECTOR, "#cells tbody tr")) == 2
    WebDriverWait(browser, 10).until(lambda c: 0 < traces() < before)
    Select(browser.find_element(By.CSS_SELECTOR, "#runs select[data-filter=mask]")).select_by_value("fish")
    assert len(css(By.CSS_SELECTOR, "#runs tbody tr")) == 4
    Select(browser.find_element(By.CSS_SELECTOR, "#paired-1 select[data-filter=significance]")).select_by_value("p_ttest")
    shown = [float(td.text) for td in css(By.CSS_SELECTOR, "#paired-1 tbody tr td:nth-child(8)")]  # p (paired t)
    assert shown and all(p < 0.05 for p in shown)

    # A click on a run: its curves (train loss, dev loss, score; accuracy is the score here) and its facts.
    row = css(By.CSS_SELECTOR, "#runs tbody tr")[0]
    run_id = row.find_element(By.TAG_NAME, "td").text
    row.click()
    WebDriverWait(browser, 30).until(lambda c: c.find_element(By.ID, "run-detail").get_attribute("data-curves") != "pending")
    detail = browser.find_element(By.ID, "run-detail")
    assert detail.get_attribute("data-curves") == "ready" and run_id in detail.text
    assert len(detail.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer .trace")) == 3
    assert "max_epochs" in detail.text and "peak memory MB" in detail.text

    # CSV export of the shown lines, through a Blob: the file lands in the download folder.
    browser.find_element(By.CSS_SELECTOR, "#runs button.csv").click()
    csv = tmp_path / "runs.csv"
    WebDriverWait(browser, 20).until(lambda c: csv.exists() and csv.read_text().count("\n") == 5)
    assert csv.read_text().splitlines()[0].startswith("run_id,folder,model,method,task")

    urls = requested_urls(browser) + browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [u for u in urls if OUTSIDE.match(u)], urls


@pytest.mark.browser
@pytest.mark.skipif(not STUDY_RUNS.is_dir(), reason="no committed study runs")
def test_study_page_is_small_and_opens(tmp_path, browser):
    """The page of the committed 200-run study: under 5 MB, and it opens with every figure drawn."""
    page = write_report(STUDY_RUNS, tmp_path / "index.html", n_resamples=20)
    assert page.stat().st_size < 5e6
    open_page(browser, page)
    assert len(browser.find_elements("css selector", "#runs tbody tr")) == len(list(STUDY_RUNS.glob("*.json")))
    assert browser.find_elements("css selector", "#cells-figure .trace")
    assert not [u for u in requested_urls(browser) if OUTSIDE.match(u)]


METHODS_RUNS = ROOT / "results" / "study" / "methods" / "runs"
CORE_RUNS = ROOT / "results" / "study" / "mean" / "runs" / "core"


@pytest.mark.browser
@pytest.mark.skipif(not (METHODS_RUNS.is_dir() and CORE_RUNS.is_dir()), reason="no committed methods study runs")
def test_methods_page_answers_on_its_first_screen(tmp_path, browser):
    """The committed methods study's page at 1280 x 1600: the verdict table (six methods, two budgets) and
    the whole forest plot are on the first screen, above every long table."""
    page = write_report(METHODS_RUNS, tmp_path / "index.html", n_resamples=20, table1_runs=[CORE_RUNS])
    browser.set_window_size(1280, 1600)
    open_page(browser, page)
    box = browser.execute_script(
        "const r = e => document.getElementById(e).getBoundingClientRect();"
        "return {forest: r('forest').bottom, table: r('verdict').top, views: r('views').top, "
        "height: window.innerHeight, methods: [...document.querySelectorAll('#verdict tbody th')].map(t => t.textContent)}")
    assert box["methods"] == ["lora", "dora", "adapter", "prefix", "ia3", "unipelt"]
    assert box["table"] < box["forest"] <= box["height"] and box["forest"] < box["views"], box


def test_runs_of_several_methods_get_table_1s_layout_filterable_by_method(tmp_path):
    """One model, two methods, original / fish / rand on SST-2 at budget 1 over three seeds: the page has
    methods_study's cells and paired differences, with a method filter; one method alone gets neither."""
    from fishtune.reports.methods_study import methods_frame, methods_paired

    runs = tmp_path / "runs"
    for method in ("lora", "dora"):
        for seed in (1, 2, 3):
            for mask, score in (("none", 70.0), ("fish", 72.0 + seed), ("rand", 71.0 - seed)):
                write_result(runs, result(method=method, mask=mask, seed=seed, score=score + (method == "dora")))
    views = {v["id"]: v for v in page_data(build_page(runs))["views"]}
    cells, paired = views["methods"], views["methods-paired"]
    assert "method" in cells["filters"] and "method" in paired["filters"]
    assert {(r["method"], r["row"]) for r in cells["rows"]} == {(m, row) for m in ("lora", "dora")
                                                                for row in ("original", "fish", "rand")}
    lora_fish = next(r for r in cells["rows"] if (r["method"], r["row"]) == ("lora", "fish"))
    assert lora_fish["mean"] == pytest.approx((73 + 74 + 75) / 3) and lora_fish["n"] == 3
    assert lora_fish["paper"] == pytest.approx(90.48)  # the paper's Table 1, LoRA-FISH budget 1, SST-2
    from fishtune.harness.results import load_results
    expected = methods_paired(methods_frame(load_results(runs)))
    assert [r["p_holm"] for r in paired["rows"]] == pytest.approx(expected["p_holm"].tolist(), rel=1e-5)
    only_lora = tmp_path / "lora"
    for path in runs.glob("*lora*.json"):
        (only_lora / path.name).parent.mkdir(exist_ok=True)
        (only_lora / path.name).write_text(path.read_text())
    assert not {"methods", "methods-paired"} & {v["id"] for v in page_data(build_page(only_lora))["views"]}


def test_table1_runs_join_table_1s_layout_only(tmp_path):
    """A second folder's runs (the methods study's LoRA rows live in the core arm's folder) join Table 1's
    cells and its Holm family, as methods_study reads both folders, and no other part of the page."""
    from fishtune.harness.results import load_results
    from fishtune.reports.methods_study import methods_frame, methods_paired

    for method, folder in (("lora", tmp_path / "core"), ("dora", tmp_path / "methods")):
        for seed in (1, 2, 3):
            for mask, score in (("none", 70.0), ("fish", 72.0 + seed), ("rand", 71.0 - seed)):
                write_result(folder, result(method=method, mask=mask, seed=seed, score=score + (method == "dora")))
    data = page_data(build_page(tmp_path / "methods", table1_runs=[tmp_path / "core"]))
    views = {v["id"]: v for v in data["views"]}
    assert {r["method"] for r in views["methods"]["rows"]} == {"lora", "dora"}
    expected = methods_paired(methods_frame(load_results(tmp_path / "core") + load_results(tmp_path / "methods")))
    got = {(r["method"], r["task"], r["budget"], r["comparison"]): r["p_holm"] for r in views["methods-paired"]["rows"]}
    assert len(got) == len(expected) == 4
    for rec in expected.to_dict("records"):
        assert got[(rec["method"], rec["task"], rec["budget"], rec["comparison"])] == pytest.approx(rec["p_holm"], rel=1e-5)
    assert {r["method"] for r in data["runs"]} == {"dora"}   # the runs, cells and costs: this folder's own


# ---- the verdict at the top: numbers against an independent computation from the files -------------

VERDICT_CELL = re.compile(r'<td class="v[^"]*" data-key="([^"]*)" data-holm="([^"]*)" title="([^"]*)"><b>([^<]*)</b> '
                          r'<span class="ci">\[([^,]*), ([^\]]*)\]</span><span class="p">n (\d+) &middot; Holm ([^<&]*)')


def verdict_cells(html: str) -> dict[tuple, dict]:
    """(name, budget, task, comparison) -> the verdict cell's numbers, as the page prints them."""
    out = {}
    for key, holm_p, family, diff, lo, hi, n, shown_p in VERDICT_CELL.findall(html):
        name, budget, task, comparison = unescape(key).split("|")
        out[(name, int(budget), task, comparison)] = {
            "holm": float(holm_p), "family": unescape(family), "diff": float(diff), "lo": float(lo), "hi": float(hi),
            "n": int(n), "shown_p": shown_p.replace(" ", "")}
    return out


def expected_comparisons(folders: list[Path], comparisons: list[tuple[str, str]]) -> dict[tuple, dict]:
    """From the result files alone (json, scipy): per method x budget x task (and `all`, pooled over tasks)
    x comparison, the mean paired difference over seeds, its 95 % t-interval and the paired t-test p; then
    Holm over the per-task rows as one family and over the pooled rows as another."""
    score = {}
    for folder in folders:
        for path in folder.rglob("*.json"):
            f = json.loads(path.read_text())
            row = {"none": "original"}.get(f["mask"], f["mask"])
            score[(f["method"], f["budget"], f["task"], f["seed"], row)] = f["best"]["score"]
    out = {}
    for method, budget in sorted({(k[0], k[1]) for k in score}):
        tasks = sorted({k[2] for k in score if k[:2] == (method, budget)})
        for task in [*tasks, "all"]:
            for a, b in comparisons:
                keys = [k for k in score if k[:2] == (method, budget) and k[4] == a and (task == "all" or k[2] == task)]
                xa = [score[k] for k in keys if (*k[:4], b) in score]
                xb = [score[(*k[:4], b)] for k in keys if (*k[:4], b) in score]
                d = np.subtract(xa, xb)
                half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
                out[(method, budget, task, f"{a} - {b}")] = {"diff": d.mean(), "lo": d.mean() - half,
                                                             "hi": d.mean() + half, "n": len(d),
                                                             "p": stats.ttest_rel(xa, xb).pvalue}
    for pooled in (True, False):
        family = [k for k in out if (k[2] == "all") == pooled]
        for k, adjusted in zip(family, plain_holm([out[k]["p"] for k in family])):
            out[k]["holm"] = adjusted
    return out


def write_methods_runs(folder_of: dict[str, Path], tasks=("sst2", "stsb"), seeds=(1, 2, 3, 4)) -> None:
    """original, fish and rand per method, task, budget and seed, with scores drawn at random (seeded);
    Adapter without a rank, as fishtune records it."""
    rng = np.random.default_rng(7)
    for method, folder in folder_of.items():
        for task in tasks:
            for budget in (1, 2):
                for seed in seeds:
                    for mask, shift in (("none", 0.0), ("fish", 3.0), ("rand", 2.0)):
                        score = float(np.round(70 + shift * budget + rng.normal(0, 1.5), 4))
                        write_result(folder, result(method=method, task=task, mask=mask, budget=budget, seed=seed,
                                                    score=score, rank=None if method == "adapter" else 1))


def test_the_verdict_equals_scipy_and_a_plain_holm_over_table_1s_family(tmp_path):
    """Table 1's page (LoRA from a second folder, as the methods study's): each verdict cell's mean
    difference, interval, n and Holm p equal scipy over the result files with Holm written out, over the
    per-task family (every method, budget, task, comparison) and the pooled one; the family is named."""
    write_methods_runs({"lora": tmp_path / "core", "adapter": tmp_path / "methods", "dora": tmp_path / "methods"})
    html = build_page(tmp_path / "methods", n_resamples=10, table1_runs=[tmp_path / "core"])
    cells = verdict_cells(html)
    expected = expected_comparisons([tmp_path / "core", tmp_path / "methods"],
                                    [("fish", "original"), ("fish", "rand")])
    assert set(cells) == set(expected) and len(cells) == 3 * 2 * 3 * 2
    for key, want in expected.items():
        got = cells[key]
        assert got["diff"] == pytest.approx(want["diff"], abs=0.005), key   # printed with 2 decimals
        assert (got["lo"], got["hi"]) == pytest.approx((want["lo"], want["hi"]), abs=0.005), key
        assert got["n"] == want["n"] == (8 if key[2] == "all" else 4)
        assert got["holm"] == pytest.approx(want["holm"], rel=1e-9), key
        assert float(got["shown_p"]) == pytest.approx(want["holm"], rel=5e-3), key
        family = "pooled" if key[2] == "all" else "per-task"
        assert got["family"] == f"Holm over the {24 // (2 if key[2] == 'all' else 1)} {family} comparisons of Table 1's family"
    assert "Holm over the 24 per-task comparisons of Table 1&#x27;s family; Holm over the 12 pooled" in html
    # Survivors are marked, and only they.
    marked = re.findall(r'<td class="v[^"]*\b(win|loss)\b[^"]*" data-key="([^"]*)"', html)
    assert {unescape(k) for _, k in marked} == {"|".join(map(str, k)) for k, w in expected.items() if w["holm"] < 0.05}


def test_a_study_group_verdict_takes_its_own_paired_tables_holm(tmp_path):
    """Without Table 1's layout (one method), the verdict is the study group's: Holm over its paired
    table's per-task rows (fish - original, rand - original, fish - rand) and over its pooled rows."""
    write_methods_runs({"lora": tmp_path / "runs"})
    html = build_page(tmp_path / "runs", n_resamples=10)
    cells = verdict_cells(html)
    expected = expected_comparisons([tmp_path / "runs"], [("fish", "original"), ("rand", "original"), ("fish", "rand")])
    name = "minilm / lora / rank 1"
    shown = {k: v for k, v in expected.items() if k[3] != "rand - original"}
    assert set(cells) == {(name, *k[1:]) for k in shown}
    for key, want in shown.items():
        got = cells[(name, *key[1:])]
        assert got["holm"] == pytest.approx(want["holm"], rel=1e-9) and got["diff"] == pytest.approx(want["diff"], abs=0.005)
        pooled = key[2] == "all"
        assert got["family"] == f"Holm over {name}'s {6 if pooled else 12} {'pooled' if pooled else 'per-task'} comparisons"
    paired = next(v for v in page_data(html)["views"] if v["id"].startswith("paired"))
    for r in paired["rows"]:   # the group's table shows the same one value
        if r["comparison"] != "rand - original":
            assert r["p_holm"] == pytest.approx(cells[(name, r["budget"], r["task"], r["comparison"])]["holm"], rel=1e-5)


def holm_values_by_comparison(html: str) -> dict[tuple, list]:
    """(method, budget, task, comparison) -> every Holm-adjusted p the page shows for it: the verdict's,
    Table 1's paired view's and the study groups' paired views' (methods study pages: one group per method)."""
    seen: dict[tuple, list] = {}
    for (name, budget, task, comparison), cell in verdict_cells(html).items():
        seen.setdefault((name.split(" / ")[-1], budget, task, comparison), []).append(cell["holm"])
    for view in page_data(html)["views"]:
        if view["id"] == "methods-paired" or view["id"].startswith("paired-"):
            method = view["title"].split(": ")[-1].split(" / ")[1] if view["id"].startswith("paired-") else None
            for r in view["rows"]:
                if r.get("p_holm") is not None:
                    key = (method or r["method"], r["budget"], r["task"], r["comparison"])
                    seen.setdefault(key, []).append(r["p_holm"])
    return seen


def test_one_holm_value_per_comparison_no_none_in_headings_and_the_forest_plot(tmp_path):
    """The methods page: every comparison shows one Holm-adjusted p (the study groups' tables leave theirs
    out, Table 1's family holds them), no heading says None (Adapter has no rank), and the forest plot has a
    dot per verdict cell, self-contained."""
    write_methods_runs({"lora": tmp_path / "core", "adapter": tmp_path / "methods", "dora": tmp_path / "methods"})
    html = build_page(tmp_path / "methods", n_resamples=10, table1_runs=[tmp_path / "core"])
    data = page_data(html)
    seen = holm_values_by_comparison(html)
    # One value (the page's data keeps 6 significant digits): the verdict's, and Table 1's view's again.
    differ = {k: v for k, v in seen.items() if max(v) - min(v) > 1e-5 * max(v)}
    assert len(seen) == 36 and all(len(v) == 2 for v in seen.values()) and not differ, differ
    groups = [v for v in data["views"] if v["id"].startswith("paired-")]
    assert len(groups) == 2 and all("p_holm" not in [c[0] for c in v["columns"]] for v in groups)
    assert all("unadjusted" in v["note"] for v in groups)
    titles = [v["title"] for v in data["views"]]
    assert "Study table: minilm / adapter" in titles and "Study table: minilm / dora / rank 1" in titles
    assert not [t for t in titles if "None" in t]
    verdict = html[html.index('<section id="verdict">'):html.index("</section>")]
    assert "None" not in verdict
    assert re.findall(r'<th rowspan="2" title="[^"]*">([^<]*)</th>', verdict) == ["lora", "dora", "adapter"]  # Table 1's order
    svg = verdict[verdict.index('<svg id="forest"'):verdict.index("</svg>")]
    assert svg.count("<circle") - 5 == len(verdict_cells(html)) == 36   # five in the legend: 3 tasks, filled, hollow
    assert svg.count("<title>") == 36 and "fish − original" in svg and "fish − rand" in svg
    # The page is the same bytes from the same files (no build time, no random ids).
    assert build_page(tmp_path / "methods", n_resamples=10, table1_runs=[tmp_path / "core"]) == html
