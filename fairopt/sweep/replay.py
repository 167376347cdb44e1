"""Run a sweep again from its ``sweep.json`` and say whether it reproduced (``fairopt sweep --replay FILE``).

``sweep.json`` holds :func:`fairopt.sweep`'s arguments (``config``, ``bound``) and what the run read besides them
(``provenance``: the versions and the data file's SHA-256). A replay refuses data that changed since, notes versions
that differ, trains the same members again and compares every recorded estimate with the new one, to the last digit
(JSON floats are written exactly).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .frontier import SweepResult
from .run import sweep

__all__ = ["PreparedReplay", "SweepReplay", "prepare", "replay", "run_prepared"]

_FORMATS = (1, 2)
_VERSIONS = ("python", "fairopt", "torch", "numpy", "platform")


@dataclass(frozen=True)
class SweepReplay:
    """What :func:`replay` returns.

    Attributes:
        result: the new run's :class:`~fairopt.sweep.frontier.SweepResult`.
        differences: one line per member (or the pick) whose new estimates are not the recorded ones, e.g.
            ``"proxy_lagrangian tol=0.05 seed=0: audit.value 0.0412 recorded, 0.0419 now"``; empty when the replay
            reproduced the file exactly.
        notes: what can explain differences: versions or bundled data files other than the recorded ones, or a file
            written before provenance was recorded (its data cannot be checked).
    """

    result: SweepResult
    differences: list[str]
    notes: list[str]

    @property
    def identical(self) -> bool:
        """Every recorded estimate, selection, multiplier and the pick came out the same."""
        return not self.differences


def replay(path: str | Path, *, device: str | None = None, log: Callable[[str], None] | None = None) -> SweepReplay:
    """Run the sweep recorded in ``path`` (a ``sweep.json``) again and compare it with the record.

    Args:
        path: a ``sweep.json`` written by ``fairopt sweep`` or :meth:`SweepResult.write
            <fairopt.sweep.frontier.SweepResult.write>`, or the folder that holds one.
        device: train on this torch device instead of the recorded one (e.g. ``"cpu"`` for a sweep recorded on a
            GPU; noted, as results may then differ in the last digits).
        log: optional ``fn(line)`` for progress lines (as :func:`fairopt.sweep`).

    Returns:
        :class:`SweepReplay`: the new result, the differences (empty: reproduced to the last digit) and notes.

    Raises:
        FileNotFoundError: ``path``, or the csv file the sweep read, does not exist.
        ValueError: ``path`` is not a sweep.json (not JSON, or no ``format``, ``config``, ``bound`` and ``points``),
            of an unknown format, recorded on data given in memory (``sweep(data=...)``: no file reproduces it); the
            csv file is not the one the sweep read (another SHA-256), or the config names another file than the
            provenance; settings this version of :func:`fairopt.sweep` does not take; everything
            :func:`fairopt.sweep` raises.
    """
    return run_prepared(prepare(path, device=device), log=log)


@dataclass(frozen=True)
class PreparedReplay:
    """A sweep.json read and checked, not yet run (:func:`prepare`): what :func:`run_prepared` trains."""

    source: Path
    recorded: dict[str, Any]
    config: dict[str, Any]
    notes: list[str]


def prepare(path: str | Path, *, device: str | None = None) -> PreparedReplay:
    """Read and check ``path`` as :func:`replay` does, before any training (so that a command line can refuse a
    bad file before it creates its output folder). Raises what :func:`replay` raises before training."""
    source = Path(path)
    if source.is_dir():
        source = source / "sweep.json"
    recorded = _read(source)
    config = dict(recorded["config"])
    if not isinstance(config.get("tolerances"), list):
        raise ValueError(f"{source}: its config has no tolerances; it is not a sweep.json written by fairopt sweep")
    notes = _check_provenance(recorded.get("provenance"), config, source)
    if device is not None and device != config.get("device"):
        notes.append(f"recorded on device {config.get('device')}, replayed on {device}: floating-point results may "
                     "differ in the last digits")  # fmt: skip
        config["device"] = device
    return PreparedReplay(source, recorded, config, notes)


def run_prepared(prepared: PreparedReplay, *, log: Callable[[str], None] | None = None) -> SweepReplay:
    """Train a :func:`prepare` d sweep again and compare it with its record (the rest of :func:`replay`)."""
    config = dict(prepared.config)
    tolerances = config.pop("tolerances")
    try:
        result = sweep(tolerances, bound=prepared.recorded["bound"], log=log, **config)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        # a setting sweep() does not take (e.g. a file written by another fairopt)
        raise ValueError(f"{prepared.source}: its settings are not this fairopt's sweep() arguments ({err})") from None
    new = json.loads(result.to_json())
    recorded_data = (prepared.recorded.get("provenance") or {}).get("data", {})
    if "sha256" in recorded_data and new["provenance"]["data"].get("sha256") != recorded_data["sha256"]:
        # the file was checked before training and hashed again as the sweep loaded it: it changed in between
        raise ValueError(f"{prepared.source}: the data file changed while the replay loaded it (its SHA-256 is not "
                         "the recorded one any more); replay again once it is the file the sweep read")  # fmt: skip
    return SweepReplay(result, _differences(prepared.recorded, new), list(prepared.notes))


def _read(source: Path) -> dict[str, Any]:
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file (give the sweep.json that fairopt sweep wrote)")
    try:
        recorded = json.loads(source.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{source} is not JSON ({err}); give the sweep.json that fairopt sweep wrote") from None
    if not isinstance(recorded, dict) or not {"format", "config", "points", "bound"} <= recorded.keys():
        raise ValueError(f"{source} is not a sweep.json (it needs format, config, bound and points); give the "
                         "sweep.json that fairopt sweep wrote (fairopt bench writes study.json)")  # fmt: skip
    if recorded["format"] not in _FORMATS:
        raise ValueError(f"{source} has format {recorded['format']!r}; this fairopt reads formats {list(_FORMATS)}")
    return recorded


def _check_provenance(provenance: Mapping[str, Any] | None, config: Mapping[str, Any], source: Path) -> list[str]:
    """Refuse data other than the recorded; the notes on what else differs."""
    from fairopt.bench.provenance import file_sha256, versions  # the bench loads when a sweep runs

    dataset = str(config.get("dataset", ""))
    csv = Path(dataset[4:]) if dataset.startswith("csv:") else None
    if not provenance:
        notes = [f"{source} was written before sweeps recorded their data and versions: neither can be checked"]
        if csv is not None and not csv.is_absolute():
            if not csv.is_file():
                raise FileNotFoundError(f"{source}: its csv path {csv} is relative to the directory the sweep ran in "
                                        "(a file written before sweeps recorded absolute paths); replay it from that "
                                        "directory")  # fmt: skip
            notes.append(f"its csv path {csv} is relative to the directory the sweep ran in; read here as "
                         f"{csv.resolve()}")  # fmt: skip
        return notes
    data = provenance.get("data", {})
    kind = data.get("source")
    if kind == "in memory":
        raise ValueError(f"{source}: the sweep ran on a dataset given in memory (sweep(data=...)), which no "
                         "file reproduces; call fairopt.sweep(..., data=<the same dataset>) with its config "
                         "instead")  # fmt: skip
    notes = []
    if kind == "csv":
        if csv is None or str(csv) != data.get("path") or "sha256" not in data:
            raise ValueError(f"{source}: its config reads {dataset!r} but its provenance describes "
                             f"{data.get('path')!r}; only a file whose SHA-256 was recorded can be replayed (edit "
                             "neither: a sweep on another file is a new sweep)")  # fmt: skip
        if not csv.is_file():
            raise FileNotFoundError(f"{source}: the data file it read, {csv}, does not exist; put it back at that path")
        digest = file_sha256(csv)
        if digest != data["sha256"]:
            raise ValueError(f"{source}: {csv} is not the file the sweep read (SHA-256 {data['sha256'][:16]}... "
                             f"recorded, {digest[:16]}... now); a run on other data is a new sweep: run fairopt "
                             "sweep with the options in its config instead of --replay")  # fmt: skip
    elif kind == "bundled":
        from fairopt.datasets._checksums import SHA256

        now = {name: SHA256.get(name) for name in data.get("sha256", {})}
        if now != data.get("sha256"):
            notes.append(f"the bundled {data.get('name')} files differ from the recorded ones (another fairopt)")
    current = versions()
    for name in _VERSIONS:
        if provenance.get(name) != current[name]:
            notes.append(f"recorded with {name} {provenance.get(name)}, replayed with {current[name]}: floating-point "
                         "results may differ in the last digits")  # fmt: skip
    return notes


def _differences(recorded: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """One line per member whose JSON fields differ (up to three fields named), and one for the pick."""
    old_points, new_points = recorded["points"], new["points"]
    if [p["label"] for p in old_points] != [p["label"] for p in new_points]:
        return [f"members: {[p['label'] for p in old_points]} recorded, {[p['label'] for p in new_points]} now"]
    out = []
    for old_point, new_point in zip(old_points, new_points):
        old, now = _flat(old_point), _flat(new_point)
        fields = [name for name in sorted(old.keys() | now.keys()) if old.get(name) != now.get(name)]
        if fields:
            shown = "; ".join(f"{f} {old.get(f)!r} recorded, {now.get(f)!r} now" for f in fields[:3])
            more = f" (and {len(fields) - 3} more fields)" if len(fields) > 3 else ""
            out.append(f"{old_point['label']}: {shown}{more}")
    if recorded.get("picked") != new.get("picked"):
        label = [p["label"] for p in old_points]

        def named(index: Any) -> str:
            return label[index] if isinstance(index, int) and 0 <= index < len(label) else repr(index)

        out.append(f"pick: {named(recorded.get('picked'))} recorded, {named(new.get('picked'))} now")
    return out


def _flat(point: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"audit.value": ..., "selection": ...}``: a point's fields, nested ones by dotted name."""
    out: dict[str, Any] = {}
    for key, value in point.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
