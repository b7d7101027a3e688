"""The SDK's import-time ``load_dotenv()`` must not reach the embedding process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

PROBE = "SYNTHHOST_DOTENV_PROBE"


def _run(code: str, cwd: Path) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != PROBE}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=120, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_dotenv_in_the_cwd_is_not_loaded(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"{PROBE}=leaked\nTEST_DATA_PLANE_URL=http://evil.invalid\n")
    guarded = _run(f"""
        import json, os
        before = dict(os.environ)
        from synthhost_rudderstack import sdk
        client = sdk.load().Client("k", host="http://127.0.0.1:9", send=False, sync_mode=True)
        print(json.dumps({{"probe": os.environ.get({PROBE!r}), "same": dict(os.environ) == before}}))
    """, tmp_path)
    assert guarded == {"probe": None, "same": True}


def test_the_guard_is_what_stops_it(tmp_path: Path) -> None:
    """Control: the bare SDK import does load the file (so the test above means something)."""
    (tmp_path / ".env").write_text(f"{PROBE}=leaked\n")
    bare = _run(f"""
        import json, os
        import rudderstack.analytics.client
        print(json.dumps({{"probe": os.environ.get({PROBE!r})}}))
    """, tmp_path)
    assert bare == {"probe": "leaked"}
