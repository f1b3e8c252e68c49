"""The celeriac app the SQLite benchmark runs (settings come from ``CELERIAC_*`` variables)."""

from celeriac import App

app = App("bench")


@app.task(ignore_result=True)
def noop() -> None:
    """Throughput runs: no work, no result."""


@app.task
def echo(x: int) -> int:
    """Round trips: the result is stored and read back."""
    return x
