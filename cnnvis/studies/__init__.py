"""One study per pipeline stage: pure functions from loaded inputs and config to a frozen result.

A stage (``stages/<name>.py``) only declares its files and params and calls its
study; figures are drawn from the result by ``cnnvis.plotting``.
"""
