"""The report: paper numbers as printed, the metric mapping, the page, RESULTS.md and README in sync."""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib
from pathlib import Path

import pytest
import yaml

from cnnvis import ConfigError
from cnnvis import report as R
from cnnvis.config import parse

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "reports" / "paper_reference.yaml"
PAPER_DIRS = (ROOT / "papers", ROOT.parent / "shared" / "papers", Path("/work/shared/papers"))


def tiny_png(rgb: tuple[int, int, int] = (40, 120, 200), size: int = 4) -> bytes:
    """A valid size×size RGB PNG written with zlib only (no plotting in the fixtures)."""
    raw = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# the shapes the stages write (train_baseline, retrain, prune_by_importance), values made up
FIXTURE_METRICS = {
    "baseline.json": {"dataset": "mnist", "test": {"top1": 98.5, "top5": 99.9}, "epochs": 3, "seed": 0,
                      "train_seconds": 12.5, "threads": 1, "history": [{"epoch": 1}],
                      "classes": ["zero", "one", "two", "three"]},
    "adjusted.json": {"test": {"top1": 99.1}, "top1": {"mean": 99.0, "std": 0.1, "n": 2, "values": [98.9, 99.1]},
                      "before_top1": {"mean": 98.5, "std": 0.0, "n": 1, "values": [98.5]},
                      "control_top1": {"mean": 98.8, "std": 0.2, "n": 2, "values": [98.6, 99.0]},
                      "recipe": {"epochs": 4}, "seconds": 20.0},
    "prune.json": {"seconds": 4.0, "model": {"tag": "adjusted", "seed": 1, "epochs": 5},
                   "per_class_table": {"layer": "features.conv1", "rows": [
        {"class": 3, "n": 10, "error": 2.0, "least_filter": 1, "error_least_removed": 2.0, "most_filter": 5,
         "error_most_removed": 7.5}]}},
}
SEEDS_JSON = {"seeds": [0, 1], "n": 2, "summary": {  # the seeds stage's aggregate (Table I's "ours" reads it)
    "baseline": {"top1": {"mean": 98.5, "std": 0.0, "n": 1}},
    "adjusted": {"top1": {"mean": 99.0, "std": 0.1, "n": 2}},
    "control": {"top1": {"mean": 98.8, "std": 0.2, "n": 2}}}}
PER_SEED = ("baseline.json", "adjusted.json", "prune.json")  # written per seed: <dataset>/seeds/<seed>/
FIGURES = ("p1_fig08_gradcam.png", "p1_fig05a_map7.png", "p2_fig02_maps.png", "beyond_randomization.png")


def make_fixture_report(tmp: Path, *, readme: str | None = None) -> Path:
    """A small project tree (params.yaml, metrics of `mnist`, one table, 4 PNGs); runs the stage; returns tmp."""
    from stages.compose import compose
    from stages.report import main

    compose(["dataset=[mnist]"], tmp / "params.yaml")
    m = tmp / "reports" / "metrics" / "mnist"
    m.mkdir(parents=True)
    (m / "seeds" / "0").mkdir(parents=True)
    (m / "seeds" / "1").mkdir()
    for name, doc in FIXTURE_METRICS.items():
        (m / "seeds" / "0" / name if name in PER_SEED else m / name).write_text(json.dumps(doc))
    # another seed's file: the page shows the primary seed's (the first of seeds.list), never this one
    (m / "seeds" / "1" / "baseline.json").write_text(json.dumps({**FIXTURE_METRICS["baseline.json"],
                                                                 "classes": ["seed1-only-class"] * 4}))
    (m / "seeds.json").write_text(json.dumps(SEEDS_JSON))
    (tmp / "reports" / "tables").mkdir()
    (tmp / "reports" / "tables" / "table1.md").write_text("| model | top-1 |\n|---|---|\n| control | 98.7 |\n")
    (tmp / "reports" / "tables" / "sanity.csv").write_text("method,rank correlation\ngradcam,0.12\n")
    f = tmp / "reports" / "figures" / "mnist"
    f.mkdir(parents=True)
    for i, name in enumerate(FIGURES):
        (f / name).write_bytes(tiny_png((40 * i, 120, 200)))
    if readme is not None:
        (tmp / "README.md").write_text(readme)
    argv = ["--metrics", str(tmp / "reports/metrics"), "--tables", str(tmp / "reports/tables"),
            "--figures", str(tmp / "reports/figures"), "--reference", str(REFERENCE),
            "--html", str(tmp / "reports/index.html"), "--markdown", str(tmp / "reports/RESULTS.md"),
            "--params", str(tmp / "params.yaml")]
    main(argv)
    if readme is not None:
        from stages.readme import main as sync_readme

        assert sync_readme(["--results", str(tmp / "reports/RESULTS.md"), "--readme", str(tmp / "README.md")]) in (0, 2)
    return tmp


# ------------------------------------------------------------ the papers' numbers


def _reference() -> dict:
    return yaml.safe_load(REFERENCE.read_text())


def _paper(ref: dict, table_id: str) -> dict:
    t = next(t for t in ref["tables"] if t["id"] == table_id)
    return {r.get("key") or r["label"]: r for r in t["paper_rows"]}


def test_reference_holds_the_papers_numbers():
    ref = _reference()
    p1 = _paper(ref, "p1_table1")
    assert [(p1[k]["before"], p1[k]["after"]) for k in ("MNIST", "CIFAR-10", "CIFAR-100")] == [
        (98.07, 99.42), (82.25, 91.61), (77.41, 87.79)]
    p3 = _paper(ref, "p3_pruning")
    assert [p3["Persian cat"][c] for c in ("initial", "least", "most")] == [10.5, 10.5, 14]
    assert [p3["Pembroke"][c] for c in ("initial", "least", "most")] == [9.39, 8.83, 15.46]
    p4 = _paper(ref, "p4_table1")
    assert [(p4[k]["top1"], p4[k]["top5"]) for k in ("baseline", "pretrained", "proposed")] == [
        (52.80, 73.31), (69.76, 89.08), (53.78, 61.09)]
    assert _paper(ref, "p4_perturbation")["grayscale_encdec"]["top1"] == 45.52


def test_reference_rows_are_well_formed():
    """Every paper row has only known keys (a comma inside an unquoted flow label splits it) and a source."""
    ref = _reference()
    for t in ref["tables"]:
        assert t["paper"] in ref["papers"] and t["source"] and t["columns"]
        allowed = {"dataset", "label", "key", "seeds", "epochs", *t["columns"]}
        for row in t["paper_rows"]:
            assert set(row) <= allowed, (t["id"], row)
            assert all(isinstance(row[c], (int, float)) for c in t["columns"] if c in row), row
    keys = [k for f in ref["figures"] for k in (f["key"] if isinstance(f["key"], list) else [f["key"]])]
    assert len(keys) == len(set(keys)) and all(re.fullmatch(r"(p[1-4]_|[a-z]+/)\w+", k) for k in keys)


def test_every_reference_number_is_printed_in_its_paper():
    papers_dir = next((d for d in PAPER_DIRS if d.is_dir()), None)
    if papers_dir is None:
        pytest.skip("the papers' texts are not in this checkout")
    ref = _reference()
    for t in ref["tables"]:
        text = (papers_dir / ref["papers"][t["paper"]]["file"]).read_text()
        for row in t["paper_rows"]:
            for c in t["columns"]:
                if c in row:
                    v = row[c]
                    printed = {f"{v:.2f}", f"{v:g}", f"{v:.1f}"}
                    assert any(re.search(rf"(?<![\d.]){re.escape(s)}(?![\d])", text) for s in printed), (t["id"], row["label"], c, v)


# ------------------------------------------------------------ the mapping


def test_lookup_takes_the_first_candidate_that_exists():
    m = {"a.json": {"test": {"top1": 1.0}}, "b.json": {"test": {"top1": 2.0}}}
    assert R.lookup(m, ["missing.json:test.top1", "b.json:test.top1", "a.json:test.top1"]) == (2.0, "b.json")
    assert R.lookup(m, "a.json:test.top5") is None
    with pytest.raises(ConfigError, match="metrics file"):
        R.lookup(m, "a.json")


def test_comparison_table_puts_ours_beside_the_paper_with_delta_on_the_same_dataset():
    ref = _reference()
    spec = next(t for t in ref["tables"] if t["id"] == "p1_table1")
    t = R.comparison_table(spec, {"mnist": {**FIXTURE_METRICS, "seeds.json": SEEDS_JSON}, "digits": {}})
    ours = [r for r in t.rows if r.who == "ours"]
    assert [r.dataset for r in ours] == ["mnist", "digits"]
    assert ours[0].values == {"before": 98.5, "after": 99.0, "control": 98.8}  # the seeds stage's means
    assert ours[0].delta == pytest.approx({"before": 98.5 - 98.07, "after": 99.0 - 99.42})  # no paper control
    assert ours[0].spread == {"before": (0.0, 1), "after": (0.1, 2), "control": (0.2, 2)}
    assert (ours[0].seeds, ours[0].epochs) == ("0, 1", "4")
    # without the seeds stage's aggregate (a run outside DVC): the one seed's own numbers
    alone = [r for r in R.comparison_table(spec, {"mnist": FIXTURE_METRICS}).rows if r.who == "ours"][0]
    assert alone.values == {"before": 98.5, "after": 99.1, "control": 98.8}
    _, cells = R.table_cells(t, 2)
    assert cells[3][3:6] == ["98.50 (n=1), Δ +0.43", "99.00 ± 0.10 (n=2), Δ -0.42", "98.80 ± 0.20 (n=2)"]
    assert set(ours[1].values.values()) == {None} and R.MISSING in ours[1].label
    assert t.has_ours


def test_rows_from_a_per_class_list_and_a_missing_stage():
    ref = _reference()
    spec = next(t for t in ref["tables"] if t["id"] == "p3_pruning")
    t = R.comparison_table(spec, {"mnist": FIXTURE_METRICS, "digits": {}})
    ours = [r for r in t.rows if r.who == "ours"]
    assert (ours[0].label, ours[0].values) == ("three", {"initial": 2.0, "least": 2.0, "most": 7.5})
    assert (ours[0].seeds, ours[0].epochs) == ("1", "5")  # the analysed model's own, not baseline.json's 0 and 3
    assert ours[1].label == R.MISSING and set(ours[1].values.values()) == {None}
    # a mapping keyed by name works as well as a list
    spec2 = next(t for t in ref["tables"] if t["id"] == "p4_perturbation")
    rows = [{"perturbation": p, "label": p, "model": m, "top1": v}
            for p, m, v in (("grayscale", "encdec", 40.0), ("grayscale", "baseline", 30.0), ("blur3", "encdec", 50.0))]
    t2 = R.comparison_table(spec2, {"tiny_imagenet": {"perturbation.json": {"rows": rows, "seed": 0}}})
    ours2 = {r.key: r for r in t2.rows if r.who == "ours"}
    assert ours2["grayscale_encdec"].delta == pytest.approx({"top1": 40.0 - 45.52})  # the paper's model only
    assert ours2["grayscale_baseline"].delta == {} and ours2["blur3_encdec"].label == "blur3 — encdec"


def test_figures_go_under_the_longest_matching_key_and_missing_ones_are_listed():
    cat = [{"key": "p1_fig05", "paper": "p1", "number": "Fig. 5", "caption": "c"},
           {"key": "p1_fig05a", "paper": "p1", "number": "Fig. 5(a)", "caption": "c"},
           {"key": ["p1_fig02", "p1_fig03"], "paper": "p1", "number": "Fig. 2-3", "caption": "c"},
           {"key": "p1_fig01", "paper": "p1", "number": "Fig. 1", "caption": "c", "expected": False}]
    figs = {"a": [("p1_fig05a_x.png", "s1"), ("p1_fig03_y.png", "s2"), ("zz.png", "s3")], "b": []}
    entries, unclaimed = R.figure_entries(cat, figs)
    by = {e.number: e for e in entries}
    assert [n for _, n, _ in by["Fig. 5(a)"].images] == ["p1_fig05a_x.png"]
    assert by["Fig. 5"].images == [] and by["Fig. 5"].missing == ["a", "b"]
    assert [n for _, n, _ in by["Fig. 2-3"].images] == ["p1_fig03_y.png"] and by["Fig. 2-3"].missing == ["b"]
    assert by["Fig. 1"].missing == []
    assert unclaimed == [("a", "zz.png", "s3")]


def test_aggregate_mean_and_sample_std():
    rows = [{"dataset": "d", "top1": 90.0}, {"dataset": "d", "top1": 92.0}, {"dataset": "d", "top1": None},
            {"dataset": "e", "top1": 80.0}]
    a = R.aggregate(rows, ["dataset"], ["top1"])
    assert a[0] == {"dataset": "d", "runs": 3, "top1.n": 2, "top1.mean": 91.0, "top1.std": pytest.approx(2 ** 0.5)}
    assert a[1]["top1.std"] is None and R.mean_std(91.0, 2 ** 0.5, 2) == "91.00 ± 1.41 (n=2)"


def test_report_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="report.colour: unknown key"):
        parse(R.ReportConfig, {"colour": "blue"}, "report")


def test_replace_block():
    text = f"intro\n{R.BLOCK_START}\nold\n{R.BLOCK_END}\noutro\n"
    new = R.replace_block(text, "| a |\n")
    assert new == f"intro\n{R.BLOCK_START}\n| a |\n{R.BLOCK_END}\noutro\n"
    assert R.replace_block(new, "| a |") == new and R.extract_block(new) == "| a |"
    assert R.replace_block("no markers", "x") is None


# ------------------------------------------------------------ the stage


def test_report_stage_writes_page_results_and_readme_block(tmp_path):
    readme = f"# Project\n\n## Results\n{R.BLOCK_START}\nstale\n{R.BLOCK_END}\n\nHand-written prose.\n"
    make_fixture_report(tmp_path, readme=readme)
    html = (tmp_path / "reports/index.html").read_text()
    md = (tmp_path / "reports/RESULTS.md").read_text()
    assert "seed1-only-class" not in html + md and "| three |" in md  # per-seed files: the primary seed's only
    ref = _reference()
    for t in ref["tables"]:
        assert f'data-table="{t["id"]}"' in html
        assert t["title"] in md
    assert html.count('<img src="figures/') == len(FIGURES)  # default: the committed PNGs, linked relatively
    assert "data:image/png;base64," not in html
    assert "98.50 (n=1), Δ +0.43" in md  # ours beside the paper's MNIST 98.07
    assert "Missing for mnist" in html  # e.g. Fig. 7 has no file
    assert "gradcam" in md and "rank correlation" in md  # beyond table (CSV) in Markdown too
    assert "sha256" in md and "Time per stage" in md
    new_readme = (tmp_path / "README.md").read_text()
    assert R.extract_block(new_readme) == R.extract_block(md)
    assert new_readme.startswith("# Project") and new_readme.endswith("Hand-written prose.\n")


def test_readme_without_markers_is_left_alone(tmp_path):
    make_fixture_report(tmp_path, readme="# Project\nno block here\n")
    assert (tmp_path / "README.md").read_text() == "# Project\nno block here\n"


def test_relative_or_embedded_images(tmp_path):
    from stages.report import source

    f = tmp_path / "reports/figures/mnist"
    f.mkdir(parents=True)
    (f / "p1_fig08_x.png").write_bytes(tiny_png())
    assert source(f / "p1_fig08_x.png", False, tmp_path / "reports") == "figures/mnist/p1_fig08_x.png"
    embedded = source(f / "p1_fig08_x.png", True, tmp_path / "reports")
    assert embedded.startswith("data:image/png;base64,") and tiny_png() == base64.b64decode(embedded.split(",", 1)[1])


def test_readme_sync_check_and_missing_markers(tmp_path, capsys):
    from stages.readme import main as sync_readme

    make_fixture_report(tmp_path, readme="# Project\n<!-- results:start -->\nold\n<!-- results:end -->\n")
    args = ["--results", str(tmp_path / "reports/RESULTS.md"), "--readme", str(tmp_path / "README.md")]
    assert sync_readme([*args, "--check"]) == 0
    (tmp_path / "README.md").write_text("# Project\n<!-- results:start -->\nstale\n<!-- results:end -->\n")
    assert sync_readme([*args, "--check"]) == 1 and "differ" in capsys.readouterr().err
    (tmp_path / "README.md").write_text("# no markers\n")
    assert sync_readme(args) == 2 and "markers" in capsys.readouterr().err


def test_readme_results_block_equals_results_md():
    readme, results = ROOT / "README.md", ROOT / "reports" / "RESULTS.md"
    if not readme.exists() or R.extract_block(readme.read_text()) is None:
        pytest.skip("README.md has no results markers yet")
    if not results.exists() and not R.extract_block(readme.read_text()).strip():
        pytest.skip("no report generated yet (empty README block, no reports/RESULTS.md): run `dvc repro`")
    assert results.exists(), "README.md has a results block but reports/RESULTS.md is missing: run `dvc repro report`"
    assert R.extract_block(readme.read_text()) == R.extract_block(results.read_text()), (
        "README.md's results block differs from reports/RESULTS.md: run "
        "`python -m stages.readme`")


def test_stage_table_headings_sit_below_the_page_headings():
    text = "# Table 1 — x\n\n| a |\n|---|\n| 1 |\n\n```\n# not a heading\n```\n"
    assert "<h4>Table 1 — x</h4>" in R.parse_stage_table("t.md", text) and "<table>" in R.parse_stage_table("t.md", text)
    md = R.stage_table_markdown("t.md", text)
    assert md.startswith("#### Table 1 — x") and "\n# not a heading\n" in md


def test_findings_are_the_tests_verdicts_with_their_numbers():
    test = {"verdict": "adjusted and control not distinguishable at α=0.05 (McNemar exact, n=10000, p=0.4; …)"}
    faith = {"sign": "positive", "methods": {
        "gradcam": {"deletion": {"black": {"auc": {"mean": 0.53}, "vs_random": {
            "mean_difference": -0.01, "ci_low": -0.03, "ci_high": 0.01, "confidence": 0.95,
            "verdict": "not distinguishable from random at α=0.05 (p=0.3, n=512)"}}}},
        "random": {"deletion": {"black": {"auc": {"mean": 0.54}}}}}}
    metrics = {"fashion_mnist": {"adjusted.json": {"adjusted_vs_control": {"mcnemar": test}},
                                 "visualize.json": {"faithfulness": faith}, "prune.json": {"sweep": {}}}}
    lines = R.findings(metrics)
    assert lines[0] == f"fashion_mnist, pHash-adjusted widths vs uniform-width control (mcnemar): {test['verdict']}."
    assert lines[1].startswith("fashion_mnist, gradcam, deletion AUC (black baseline, 'positive' sign rule): 0.530 vs "
                               "0.540 for random maps, paired difference -0.010 (95 % CI [-0.030, +0.010]")
    assert lines[1].endswith("not distinguishable from random at α=0.05 (p=0.3, n=512).") and len(lines) == 2
    assert R.findings({"mnist": {}}) == []  # nothing tested, nothing said
