"""The engine: the optimization loop and how it schedules evaluations (an ``Executor``)."""
