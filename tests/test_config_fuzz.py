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
            "society", "tracing", "study", "file", "valid", "runtime"} <= sections
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


def _check(report: fuzz.Report, n: int) -> None:
    summary = report.summary()
    details = "\n".join(f"{o.variant.id[:100]}: {o.notes or ('traceback' if o.traceback else 'hang')}\n"
                        f"{o.stderr[-600:]}" for o in report.failures()[:10])
    assert summary["variants"] == n
    for key in ("tracebacks", "hangs", "wrong_acceptances", "wrong_rejections", "missing_location", "misplaced",
                "validate_optimize_disagreements"):
        assert summary[key] == 0, (key, details)


def test_round_two_shapes_overflows_surrogates_looping_templates_nonsense_values_learner_options() -> None:
    """The shapes of hardening round 2, a stratified sample: each refused cleanly with its field, the
    valid learner settings accepted and their learner started as a run starts it."""
    kinds = {v.kind for v in fuzz.generate() if v.kind.startswith("r2")}
    assert {"r2-step", "r2-surrogate", "r2-template", "r2-ray", "r2-society", "r2-learner", "r2-valid-learner",
            "r2-label", "r2-judge"} <= kinds
    _check(fuzz.run(80, in_process=True, timeout=30, kinds=("r2",)), 80)


def test_a_target_raising_systemexit_or_keyboardinterrupt_ends_the_run_cleanly() -> None:
    """Valid configs whose Python target raises SystemExit, KeyboardInterrupt or a BaseException subclass
    (sync and async): the real run ends with exit 0 or 3, no traceback, not taken for Ctrl-C."""
    report = fuzz.run(None, in_process=True, timeout=60, kinds=("runtime",))
    _check(report, 6)
    assert all(o.optimize_rc == 0 for o in report.outcomes)


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
