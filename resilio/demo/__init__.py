"""`resilio demo`: a flaky upstream, the same workload twice, and a side-by-side report.

`upstream` runs the flaky HTTP service (uvicorn behind a `ChaosProxy`, in a
child process) and holds the scripted timeline of its faults; `run` drives
the workload with a bare `httpx.AsyncClient` and then through
`ResilientTransport`, and prints the comparison; `report` renders the HTML
page with its SVG timeline.
"""

from __future__ import annotations

__all__: list[str] = []
