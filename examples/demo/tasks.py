"""The demo's tasks: an ordinary celeriac project module."""

from celeriac import App

# No broker or backend URL: the embedded SQLite broker and result store.
app = App("demo")


@app.task
def add(x, y):
    return x + y


@app.task(bind=True, max_retries=3, default_retry_delay=0.5)
def flaky(self, fail_times):
    """Fails ``fail_times`` times, then succeeds: each failure is a retry."""
    if self.request.retries < fail_times:
        raise self.retry(exc=ConnectionError(f"attempt {self.request.retries + 1} failed"))
    return f"succeeded after {self.request.retries} retries"


@app.task
def divide(x, y):
    return x / y
