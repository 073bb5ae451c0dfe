"""`pipeline audit export`: the audit log's events as JSON lines, for external tools.

Rows stream from a server-side cursor in global sequence order (``projections.audit_log.export_rows``),
so memory stays bounded whatever the log's size. Each line is one event as the history API shows it
(``projections.audit_log.event_view``). The file is written beside its destination and renamed into
place when complete, so a half-written export is never taken for a finished one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg

from infra.adapters.postgres import connection_kwargs
from infra.runtime.settings import Settings
from projections.audit_log import AuditFilters, count_rows, event_view, export_rows

# done, total, seconds since the start
ExportProgress = Callable[[int, int, float], None]
PROGRESS_EVERY = 1000  # rows between progress calls


async def export_events(
    settings: Settings, filters: AuditFilters, output: Path, progress: ExportProgress | None = None
) -> int:
    """Write the events ``filters`` select to ``output`` (JSON lines); return how many."""
    if not settings.database.url:
        raise SystemExit("missing settings: DATABASE_URL (or start everything with `make run`)")
    started = time.monotonic()
    kwargs: Any = connection_kwargs(settings.database.schema)
    partial = output.with_name(f".{output.name}.partial")
    written = 0
    async with await psycopg.AsyncConnection.connect(settings.database.url, **kwargs) as conn:
        total = await count_rows(conn, filters)
        await conn.commit()
        with partial.open("wb") as out:
            async for row in export_rows(conn, filters):
                out.write(orjson.dumps(event_view(row), option=orjson.OPT_APPEND_NEWLINE))
                written += 1
                if progress is not None and written % PROGRESS_EVERY == 0:
                    progress(written, max(total, written), time.monotonic() - started)
    partial.replace(output)
    if progress is not None:
        progress(written, max(total, written), time.monotonic() - started)
    return written
