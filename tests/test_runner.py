"""The Stage runner: one line and exit 2 on every user-fixable failure, no partial output, all outputs at once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from cnnvis import DataError
from cnnvis.io import load_npz_arrays, save_json, save_text
from stages._runner import Context, Input, Output, Stage

from conftest import ROOT


def toy_stage(run, **kw) -> Stage:
    return Stage("toy", "a toy stage", run, per_dataset=False, params={"report": None},
                 inputs={"arrays": Input(load_npz_arrays, made_by="maker")},
                 outputs={"metrics": Output(save_json), "table": Output(save_text),
                          "figures": Output(directory=True)}, **kw)


@pytest.fixture
def files(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.arange(3))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"report": {"title": "t"}, "hardware": {"threads": 1}}))
    return tmp_path


def argv(tmp: Path, out: Path, arrays: Path | None = None) -> list[str]:
    return ["--arrays", str(arrays or tmp / "a.npz"), "--metrics", str(out / "m.json"), "--table", str(out / "t.md"),
            "--figures", str(out / "figs"), "--params", str(tmp / "params.yaml")]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*")) if directory.exists() else []


def good_run(ctx: Context) -> dict:
    (ctx.out["figures"] / "f.txt").write_text("figure")
    return {"metrics": {"sum": int(ctx.inputs["arrays"]["x"].sum())}, "table": "| a |\n"}


def test_outputs_written_together_with_a_run_record(files):
    out = files / "out"
    toy_stage(good_run).main([*argv(files, out), "--record", str(out / "run.json")])
    assert json.loads((out / "m.json").read_text()) == {"sum": 3}
    record = json.loads((out / "run.json").read_text())
    assert isinstance(record["stage_seconds"], float) and record["environment"]["device"] == "cpu"
    assert record["environment"]["cpu_isa"] and record["environment"]["versions"]["torch"]
    assert (out / "t.md").read_text() == "| a |\n" and (out / "figs" / "f.txt").read_text() == "figure"
    assert leftovers(out) == ["f.txt", "figs", "m.json", "run.json", "t.md"]  # no temporary names left


def test_metrics_keep_results_and_the_record_keeps_how_the_run_went(files):
    """Two runs with equal results but other timings give equal metrics files (an empty `dvc metrics diff`)."""
    from cnnvis.io import merge_run_record

    doc = {"test": {"top1": 91.5}, "train_seconds": 3.0, "config": {"lr": 0.1}, "threads": 2,
           "history": [{"epoch": 1, "val_top1": 80.0, "seconds": 1.5, "images_per_s": 9.0}],
           "timings": {"a_s": 1.0}, "rows": [{"name": "x", "top1": 1.0}]}
    seconds = iter([3.0, 4.0])

    def run(ctx):
        return {"metrics": {**doc, "train_seconds": next(seconds)}, "table": ""}

    for name in ("a", "b"):
        toy_stage(run).main([*argv(files, files / name), "--record", str(files / name / "run.json")])
    a, b = (json.loads((files / n / "m.json").read_text()) for n in "ab")
    assert a == b == {"test": {"top1": 91.5}, "history": [{"epoch": 1, "val_top1": 80.0}], "rows": [{"name": "x", "top1": 1.0}]}
    record = json.loads((files / "b" / "run.json").read_text())
    assert record["train_seconds"] == 4.0 and record["history"] == [{"seconds": 1.5, "images_per_s": 9.0}]
    whole = merge_run_record(b, record)
    assert {k: whole[k] for k in doc} == {**doc, "train_seconds": 4.0}


def test_failure_after_partial_writes_leaves_nothing(files):
    def run(ctx):
        (ctx.out["figures"] / "f.txt").write_text("half")
        save_json(ctx.out["metrics"], {"half": True})
        raise DataError("the data ran out")

    out = files / "out"
    with pytest.raises(SystemExit) as e:
        toy_stage(run).main(argv(files, out))
    assert e.value.code == 2 and leftovers(out) == []


def test_failure_keeps_previous_outputs_untouched(files):
    out = files / "out"
    toy_stage(good_run).main(argv(files, out))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def run(ctx):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        toy_stage(run).main(argv(files, out))
    assert e.value.code == 130 and {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_bad_input_is_one_line_naming_the_file(files, capsys, damage):
    bad = files / "bad.npz"
    if damage == "truncated":
        bad.write_bytes((files / "a.npz").read_bytes()[:40])
    elif damage == "garbage":
        bad.write_bytes(b"not a zip at all")
    ran = []
    with pytest.raises(SystemExit) as e:
        toy_stage(lambda ctx: ran.append(1)).main(argv(files, files / "out", arrays=bad))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith(f"toy: error: {bad}: ")
    assert ("run `dvc repro maker` first" if damage == "missing" else "unreadable") in err
    assert not ran and leftovers(files / "out") == []


def test_unwritable_output_fails_before_any_work(files, capsys, monkeypatch):
    ran = []
    real = tempfile.mkstemp

    def denied(*a, dir=None, **kw):
        if dir is not None and "locked" in str(dir):
            raise PermissionError(13, "Permission denied", str(dir))
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(SystemExit) as e:
        toy_stage(lambda ctx: ran.append(1)).main(argv(files, files / "locked"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "locked/m.json: cannot write there (Permission denied)" in err
    assert not ran and leftovers(files / "locked") == []  # the directory it made for the probe is gone too


def test_output_under_a_file_is_one_line(files, capsys):
    with pytest.raises(SystemExit) as e:
        toy_stage(good_run).main(argv(files, files / "a.npz" / "sub"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "a.npz is a file, not a directory" in err


def test_really_unwritable_directory_as_another_user(tmp_path):
    """As a user without write permission (root ignores permission bits, so the test drops to nobody)."""
    if os.geteuid() != 0 or subprocess.run(["id", "nobody"], capture_output=True).returncode != 0:
        pytest.skip("needs root to switch to user nobody")
    files = Path(tempfile.mkdtemp(prefix="cnnvis-perm-"))  # pytest's own tmp dirs are private to root
    os.chmod(files, 0o755)
    locked = files / "locked"
    locked.mkdir(mode=0o555)
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from stages.download import main; main(sys.argv[1:])"
    params = files / "params.yaml"
    params.write_text(yaml.safe_dump({"dataset": {"digits": {"name": "digits"}}, "hardware": {"threads": 1}}))
    os.chmod(params, 0o644)
    result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", code,
                             "--dataset", "digits", "--out", str(locked / "raw"), "--params", str(params),
                             "--download-root", str(locked / "dl")], capture_output=True, text=True, cwd="/",
                            env={**os.environ, "HOME": "/tmp"})
    shutil.rmtree(files)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"download: error: {locked / 'raw'}: cannot write there (Permission denied); fix the permissions of "
        f"{locked} or choose another path"]


def test_undeclared_output_is_a_bug_not_a_user_error(files):
    with pytest.raises(RuntimeError, match="undeclared outputs"):
        toy_stage(lambda ctx: {"extra": 1}).main(argv(files, files / "out"))
    assert leftovers(files / "out") == []


def test_unknown_params_section_value_is_one_line(files, capsys):
    (files / "params.yaml").write_text(yaml.safe_dump({"report": {}, "hardware": {"device": "tpu"}}))
    with pytest.raises(SystemExit) as e:
        toy_stage(good_run).main(argv(files, files / "out"))
    assert e.value.code == 2 and "hardware.device = 'tpu': unknown" in capsys.readouterr().err


def test_typo_section_is_one_line(files, capsys):
    (files / "params.yaml").write_text(yaml.safe_dump({"report": {}, "trian": {"epochs": 3}}))
    with pytest.raises(SystemExit) as e:
        toy_stage(good_run).main(argv(files, files / "out"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "unknown section 'trian'" in err and "a typo?" in err


def test_hand_edited_params_yaml_stops_the_stage(files, capsys):
    """A params.yaml that records its composition is re-composed from conf/ and compared at every stage run."""
    from stages.compose import compose

    compose([], files / "params.yaml")
    toy_stage(good_run).main(argv(files, files / "ok"))  # the composition itself passes
    params = yaml.safe_load((files / "params.yaml").read_text())
    params["report"]["decimals"] = 7
    (files / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(SystemExit) as e:
        toy_stage(good_run).main(argv(files, files / "out"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "differs from conf/ composed with no overrides at report.decimals" in err
    assert leftovers(files / "out") == []


def test_save_figures_names_with_dots_and_saved_files(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnnvis.io import Saved, save_figures

    def figures():
        yield "maps_features.conv1", plt.figure()  # a layer name, not a file suffix
        yield "volume.nrrd", Saved(write=lambda p: p.write_bytes(b"NRRD"))
        yield "small.png", Saved(plt.figure(figsize=(1, 1)), {"dpi": 10})

    save_figures(tmp_path, figures())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps_features.conv1.png", "small.png", "volume.nrrd"]
    assert (tmp_path / "volume.nrrd").read_bytes() == b"NRRD" and not plt.get_fignums()  # every figure closed


def test_parallel_jobs_share_the_cores(monkeypatch):
    """`CNNVIS_PARALLEL_JOBS=k` (a sweep sets it; `dvc queue start -j k` users set it) gives each job
    max(1, cores // k) torch threads unless hardware.threads names a count."""
    import torch

    from cnnvis.config import HardwareConfig
    from cnnvis.hardware import apply_hardware
    from cnnvis.threads import available_cores

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("CNNVIS_PARALLEL_JOBS", "2")
        apply_hardware(HardwareConfig(threads=0))
        assert torch.get_num_threads() == max(1, available_cores() // 2)
        apply_hardware(HardwareConfig(threads=3))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
