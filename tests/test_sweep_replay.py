"""sweep.json's provenance (versions, the data file's SHA-256) and ``fairopt sweep --replay``: a replay reproduces the
record to the last digit, refuses a changed or missing data file, names what differs, and exits 1 when anything does."""

from __future__ import annotations

import hashlib
import json
import platform
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fairopt
from fairopt.datasets._checksums import SHA256
from fairopt.sweep.replay import prepare, replay, run_prepared
from fairopt.sweep.run import sweep

pd = pytest.importorskip("pandas")

SMALL = {"model": "logistic", "epochs": 1, "penalty_coefficients": (1.0,), "records_per_run": 2,
         "constraint": "demographic_parity", "train_size": None}  # fmt: skip


def _people(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    n = 600
    s = rng.choice(["a", "b"], n)
    x = rng.normal(size=n) + (s == "a")
    frame = pd.DataFrame({"x": x, "z": rng.normal(size=n), "s": s,
                          "approved": np.where(x + rng.normal(size=n) > 0.5, "yes", "no")})  # fmt: skip
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A csv sweep written to disk: (its sweep.json, the csv)."""
    folder = tmp_path_factory.mktemp("sweep")
    csv = _people(folder / "people.csv")
    result = sweep([0.05, 0.1], dataset=f"csv:{csv}", csv_target="approved", csv_positive_label=("yes",),
                   csv_sensitive=("s",), **SMALL)  # fmt: skip
    written = result.write(folder / "out", plots=False)
    return next(p for p in written if p.suffix == ".json"), csv


def test_sweep_json_records_versions_and_the_data_files_hash(recorded):
    path, csv = recorded
    provenance = json.loads(path.read_text())["provenance"]
    assert provenance["fairopt"] == fairopt.__version__ and provenance["torch"] == torch.__version__
    assert provenance["numpy"] == np.__version__
    data = provenance["data"]
    assert data["source"] == "csv" and data["path"] == str(csv.resolve())
    assert data["sha256"] == hashlib.sha256(csv.read_bytes()).hexdigest()
    assert data["rows"] == 600 and data["target"] == "approved"
    assert data["feature_names"] == ["x", "z"]  # the sensitive column and the label are not features
    german = sweep([0.1], dataset="german", **{**SMALL, "penalty_coefficients": ()})
    assert german.provenance["data"]["source"] == "bundled"
    assert german.provenance["data"]["sha256"] == {"german.data.gz": SHA256["german.data.gz"]}


def test_a_relative_csv_path_is_recorded_absolute(tmp_path, monkeypatch):
    """A replay from another working directory must read the same file."""
    _people(tmp_path / "people.csv")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    result = sweep([0.1], dataset="csv:people.csv", csv_target="approved", csv_positive_label=("yes",),
                   csv_sensitive=("s",), **{**SMALL, "penalty_coefficients": ()})  # fmt: skip
    assert result.config["dataset"] == f"csv:{(tmp_path / 'people.csv').resolve()}"
    assert result.provenance["data"]["path"] == str((tmp_path / "people.csv").resolve())
    result.write("out", plots=False)
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert replay("../out").identical  # a folder holding a sweep.json is read as that file


def test_a_pre_provenance_file_with_a_relative_csv_path_says_where_it_was_read(tmp_path, monkeypatch, recorded):
    path, csv = recorded
    record = json.loads(path.read_text())
    del record["provenance"]
    record["format"] = 1
    record["config"]["dataset"] = "csv:people.csv"  # as files written before paths were made absolute
    (tmp_path / "old.json").write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"is relative to the directory the sweep ran in .*replay it from that"):
        replay("old.json")
    (tmp_path / "people.csv").write_bytes(csv.read_bytes())
    again = replay("old.json")
    assert again.identical
    assert again.notes[1] == (f"its csv path people.csv is relative to the directory the sweep ran in; read here as "
                              f"{(tmp_path / 'people.csv').resolve()}")  # fmt: skip


def test_a_replay_reproduces_the_record_to_the_last_digit(recorded, tmp_path, monkeypatch):
    path, _ = recorded
    monkeypatch.chdir(tmp_path)  # another working directory
    again = replay(path)
    assert again.identical and again.differences == [] and again.notes == []
    assert json.loads(again.result.to_json())["points"] == json.loads(path.read_text())["points"]


def test_a_replay_names_each_estimate_that_differs(recorded, tmp_path):
    path, _ = recorded
    record = json.loads(path.read_text())
    record["points"][1]["audit"]["value"] += 1e-12  # as a rerun on another BLAS might give
    record["points"][2]["test"]["accuracy"] = 0.5
    record["picked"] = 2 if record["picked"] != 2 else 0
    record["provenance"].update(torch="0.0.1", platform="plan9, mips")
    edited = tmp_path / "sweep.json"
    edited.write_text(json.dumps(record))
    again = replay(edited)
    assert not again.identical
    labels = [p["label"] for p in record["points"]]
    first, second, pick = again.differences
    assert first.startswith(f"{labels[1]}: audit.value ") and "recorded" in first
    assert second.startswith(f"{labels[2]}: test.accuracy 0.5 recorded, ")
    assert pick.startswith("pick: ")
    assert again.notes == [
        f"recorded with torch 0.0.1, replayed with {torch.__version__}: floating-point results may differ in the last "
        "digits",
        f"recorded with platform plan9, mips, replayed with {sys.platform}, {platform.machine()}: floating-point "
        "results may differ in the last digits",
    ]
    record["picked"] = 7  # an index out of range is named, not an IndexError
    edited.write_text(json.dumps(record))
    assert replay(edited).differences[-1].startswith("pick: 7 recorded, ")


def test_a_replay_refuses_a_changed_or_missing_data_file(recorded, tmp_path):
    path, csv = recorded
    record = json.loads(path.read_text())
    moved = tmp_path / "people.csv"
    moved.write_bytes(csv.read_bytes())
    record["provenance"]["data"]["path"] = str(moved)
    record["config"]["dataset"] = f"csv:{moved}"
    edited = tmp_path / "sweep.json"
    edited.write_text(json.dumps(record))
    assert replay(edited).identical  # the same bytes elsewhere: the same sweep
    _people(moved, seed=1)
    with pytest.raises(ValueError, match=r"people\.csv is not the file the sweep read \(SHA-256 [0-9a-f]{16}\.\.\. "):
        replay(edited)
    moved.unlink()
    with pytest.raises(FileNotFoundError, match=r"the data file it read, .*people\.csv, does not exist"):
        replay(edited)
    # the file the sweep reads is the one checked: a config pointing elsewhere than the provenance is refused
    record["config"]["dataset"] = f"csv:{csv}"
    edited.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"its config reads 'csv:.*' but its provenance describes"):
        replay(edited)


def test_a_replay_refuses_what_is_not_a_sweep_it_can_rerun(recorded, tmp_path):
    path, _ = recorded
    with pytest.raises(FileNotFoundError, match="no such file"):
        replay(tmp_path / "missing.json")
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(ValueError, match="is not JSON"):
        replay(tmp_path / "text.json")
    (tmp_path / "study.json").write_text(json.dumps({"schema": "fairopt.bench.study", "config": {}}))
    with pytest.raises(ValueError, match=r"is not a sweep\.json .*fairopt bench writes study\.json"):
        replay(tmp_path / "study.json")
    record = json.loads(path.read_text())
    for change, message in [
        ({"format": 9}, r"has format 9; this fairopt reads formats \[1, 2\]"),
        ({"provenance": {**record["provenance"], "data": {"source": "in memory"}}}, "given in memory"),
        ({"config": {**record["config"], "epochz": 3}}, "not this fairopt's sweep\\(\\) arguments"),
        ({"config": {**record["config"], "tolerances": None}}, "its config has no tolerances"),
    ]:
        (tmp_path / "edited.json").write_text(json.dumps({**record, **change}))
        with pytest.raises(ValueError, match=message):
            replay(tmp_path / "edited.json")


def test_a_replay_on_another_device_is_noted(recorded):
    path, _ = recorded
    prepared = prepare(path, device="cpu:0")
    assert prepared.config["device"] == "cpu:0"
    assert prepared.notes == ["recorded on device cpu, replayed on cpu:0: floating-point results may differ in the "
                              "last digits"]  # fmt: skip
    assert run_prepared(prepared).identical


def test_a_file_without_provenance_replays_with_a_note(recorded, tmp_path):
    path, _ = recorded
    record = json.loads(path.read_text())
    del record["provenance"]
    record["format"] = 1
    (tmp_path / "old.json").write_text(json.dumps(record))
    again = replay(tmp_path / "old.json")
    assert again.identical
    assert again.notes == [f"{tmp_path / 'old.json'} was written before sweeps recorded their data and versions: "
                           "neither can be checked"]  # fmt: skip


def test_the_cli_replay_exits_0_when_identical_and_1_when_not(recorded, tmp_path, capsys):
    from fairopt.cli import main

    path, _ = recorded
    assert main(["sweep", "--replay", str(path), "--quiet", "--no-plots", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert f"replay of {path}: identical, every estimate of the 3 members and the pick to the last digit" in out
    assert (tmp_path / "a" / "sweep.json").is_file()
    record = json.loads(path.read_text())
    record["points"][0]["selection"] = "last iterate"
    (tmp_path / "edited.json").write_text(json.dumps(record))
    assert main(["sweep", "--replay", str(tmp_path / "edited.json"), "--quiet", "--no-plots", "--out",
                 str(tmp_path / "b")]) == 1  # fmt: skip
    out = capsys.readouterr().out
    assert "1 difference(s) from the record:" in out and "selection 'last iterate' recorded" in out


def test_the_cli_replay_refuses_changed_data_and_overwriting_the_record_before_making_a_folder(
    recorded, tmp_path, capsys
):
    from fairopt.cli import main

    path, _ = recorded
    record = json.loads(path.read_text())
    copy = tmp_path / "people.csv"
    _people(copy, seed=1)  # other rows than the recorded file's
    record["config"]["dataset"] = f"csv:{copy}"
    record["provenance"]["data"]["path"] = str(copy)
    (tmp_path / "edited.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--replay", str(tmp_path / "edited.json"), "--quiet", "--out", str(tmp_path / "new")])
    assert exit_info.value.code == 2 and "is not the file the sweep read" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # refused before the output folder was made
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--replay", str(path), "--quiet", "--out", str(path.parent)])
    assert exit_info.value.code == 2
    assert "holds the sweep.json being replayed, which the replay would overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--replay", "x.json", "--epochs", "3", "--tolerances", "0.1"], "drop --tolerances, --epochs"),
        (["--replay", "x.json", "--dataset", "german"], "drop --dataset"),
        (["--replay", "x.json", "--model", "mlp"], "drop --model"),  # even at its default value
        ([], "--tolerances is required .* or --replay FILE"),
    ],
)
def test_the_cli_refuses_settings_beside_replay_and_no_tolerances_without_it(options, message, capsys, tmp_path):
    from fairopt.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--quiet", "--out", str(tmp_path), *options])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_data_file_that_changes_during_the_replay_is_refused(recorded, monkeypatch):
    """The file is hashed before training and again as the sweep loads it: a change in between is refused, not
    reported as differences."""
    import fairopt.bench.provenance as provenance

    path, _ = recorded
    prepared = prepare(path)
    monkeypatch.setattr(provenance, "file_sha256", lambda _: "0" * 64)  # the bytes the sweep loads are others
    with pytest.raises(ValueError, match="the data file changed while the replay loaded it"):
        run_prepared(prepared)
