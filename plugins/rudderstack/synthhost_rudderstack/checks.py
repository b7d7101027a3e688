"""``synthhost check`` item of the RudderStack exporter: the data plane accepts a test
event sent the way every event is (the real SDK's ``/v1/batch`` request, the write key
as Basic auth)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from synthhost.checks import CheckResult, failed, passed, skipped
from synthhost.errors import UsageError

if TYPE_CHECKING:
    from synthhost.host import Host

EVENT_TYPE = "synthhost_check"


def data_plane(host: Host) -> CheckResult:
    from synthhost.outbox import PermanentSendError, RetryableSendError
    from synthhost_rudderstack.exporter import Config, RudderStackExporter

    try:
        config = Config.from_env(host.settings.env)
    except UsageError as exc:
        return failed(exc.message, "fix the named variable")
    if config is None:
        return skipped("RUDDERSTACK_WRITE_KEY not set: events are not forwarded",
                       "set RUDDERSTACK_WRITE_KEY and RUDDERSTACK_DATA_PLANE_URL to forward events")
    exporter = RudderStackExporter(config, timeout_s=5.0)
    event_id = f"check{uuid.uuid4().hex[:27]}"
    event = {"id": event_id, "workspace_id": "synthhost-check", "event_type": EVENT_TYPE, "status": "success",
             "context": {"note": "synthhost check: a test event"}, "created_at": datetime.now(UTC).isoformat()}
    try:
        exporter.send([event])
    except (RetryableSendError, PermanentSendError) as exc:
        fix = ("check RUDDERSTACK_WRITE_KEY (the source's write key)" if " 401" in str(exc) or " 403" in str(exc)
               else "check RUDDERSTACK_DATA_PLANE_URL and that the data plane is up")
        return failed(f"{config.data_plane_url}: test event not accepted: {exc}", fix)
    return passed(f"{config.data_plane_url}: test event {event_id} ({EVENT_TYPE}) accepted")
