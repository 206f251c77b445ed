"""A sample of the config fuzzer (``config_fuzzer.py``, next to this file): broken configs are
refused cleanly, valid ones accepted.

The full run (``python benchmarks/config_fuzz.py``) takes ~600 variants through
real ``convergence validate`` subprocesses; here a stratified sample runs
in-process (validate through the CLI, and optimize up to its first call) so
the suite stays fast.
"""

from __future__ import annotations

from pathlib import Path

import config_fuzzer as fuzz
import pytest


def test_the_fuzzer_covers_every_section_with_hundreds_of_variants() -> None:
    variants = fuzz.generate()
    assert len(variants) >= 500
    sections = {v.section for v in variants}
    assert {"target", "api", "search_space", "evaluation", "optimization", "output", "storage", "legacy",
            "society", "tracing", "study", "file", "valid"} <= sections
    picked = fuzz.sample(variants, 100)
    assert len(picked) == 100 and len({(v.base, v.section) for v in picked}) >= 40


def test_a_sample_of_broken_configs_is_refused_cleanly() -> None:
    report = fuzz.run(100, in_process=True, timeout=30)
    summary = report.summary()
    details = "\n".join(f"{o.variant.id[:100]}: {o.notes or ('traceback' if o.traceback else 'hang')}\n"
                        f"{o.stderr[-600:]}" for o in report.failures()[:10])
    assert summary["variants"] == 100
    assert summary["tracebacks"] == 0, details
    assert summary["hangs"] == 0, details
    assert summary["wrong_acceptances"] == 0, details
    assert summary["wrong_rejections"] == 0, details
    assert summary["missing_location"] == 0, details
    assert summary["misplaced"] == 0, details
    assert summary["validate_optimize_disagreements"] == 0, details


@pytest.mark.slow
def test_fuzzed_validate_subprocesses_never_show_a_traceback() -> None:
    """A few file-level variants through the real command (own process, real exit codes)."""
    variants = [v for v in fuzz.generate() if v.base == "default" and v.section == "file"]
    assert variants
    import tempfile

    tmp = Path(tempfile.mkdtemp())
    fuzz.make_project(tmp)
    try:
        for v in variants[:12]:
            path = tmp / v.filename
            path.write_bytes(v.text)
            o = fuzz.run_subprocess(v, path, 60.0, {**__import__("os").environ, **fuzz.ENV})
            fuzz.judge(o, path.name)
            assert not o.traceback and not o.hang and not o.notes, (v.id, o.stderr[-800:])
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
