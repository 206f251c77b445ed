"""The root of every exception Convergence raises on purpose.

An application embedding Convergence catches ``ConvergenceError`` for all of
them; each subclass lives next to the code that raises it::

    ConvergenceError
     +-- ConfigError          config/loader.py     a bad optimization.yaml (file, line, field, expected)
     +-- TestCaseError        evaluation/cases.py  test cases that cannot be loaded (also a ValueError)
     +-- MetricConfigError    evaluation/metrics.py  a metric that cannot be built (also a ValueError)
     +-- MetricError          evaluation/metrics.py  a metric that cannot score an output (also a ValueError)
     +-- JudgeParseError      evaluation/judge.py  an LLM judge answer without a verdict (also a ValueError)
     +-- TemplateError        targets/templating.py  a Jinja template that fails (also a ValueError)
     +-- TargetError          targets/base.py      one target call failed (``retryable``, ``retry_after``)
     +-- StorageError         storage/store.py     the project database cannot be used
     |    +-- RunNotFoundError  no run with that id (also a KeyError)
     |    +-- RunInUseError   another live process owns the run
     |    +-- LeaseLostError  another process took the run over
     |    +-- StoreOpenError  api.py: the project database cannot be opened (nothing ran)
     |    +-- DatabaseFileError  storage/faults.py: the file is damaged, empty, on a full disk or read-only
     +-- WriterError          storage/writer.py    the group-commit writer keeps failing
     +-- ResumeError          engine/session.py    nothing to resume, the config changed, or the run is in use
     +-- RayBackendError      engine/ray_worker.py  Ray missing, the cluster unreachable, the target not built on it
     +-- AgentLLMError        llm/agent_client.py  the society LLM could not be reached or refused every attempt
     +-- AnswerError          society/answer.py    an agent's answer is not a valid configuration (also a ValueError)
     +-- TargetCallError      society/base.py      an agent's own target call failed or found the budget spent
     +-- SAODatasetError      society/sao/dataset.py  a preference dataset that cannot be read or written
     +-- OutputsError         reporting/outputs.py  a run's report files cannot be written (the run is stored)

Five exception classes are internal and never reach the caller: ``At``
(config/fields.py, a validator's error that the loader reports as a
``ConfigError``), ``PathError`` (targets/http_target.py, a missing JSON path,
turned into a ``TargetError``), ``_Bad`` (society/sao/dataset.py, a record's problem,
raised again as an ``SAODatasetError`` with the file and line) and
``TraceFailure`` (tracing/session.py, a redacted stand-in recorded in a trace,
never raised) and ``LearnerTimeout`` (engine/learner_driver.py, a learner's update
that outran ``society.agent_timeout_seconds``: the driver keeps the shares in force).
"""

from __future__ import annotations


class ConvergenceError(Exception):
    """Base class of Convergence's own exceptions."""
