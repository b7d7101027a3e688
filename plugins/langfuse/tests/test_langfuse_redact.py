"""What counts as a secret, and what must survive scrubbing."""

from __future__ import annotations

import pytest

from synthhost_langfuse.redact import REDACTED, Redactor, secret_env_values

SECRETS = [
    "sk-proj-" + "A1b2" * 10,
    "sk-ant-api03-" + "x" * 40,
    "sk-lf-0123456789abcdef01",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_" + "a" * 36,
    "xoxb-1234567890-abcdefghij",
    "AIza" + "b" * 35,
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "Bearer abcdef0123456789",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
]


@pytest.mark.parametrize("secret", SECRETS)
def test_langfuse_known_credential_shapes_are_masked(secret: str) -> None:
    out = Redactor().text(f"before {secret} after")
    assert secret not in out and REDACTED in out
    assert out.startswith("before ") and out.endswith(" after")


def test_langfuse_assignments_keep_the_name() -> None:
    r = Redactor()
    assert r.text("api_key=abc123xyz and password: 'hunter22'") == (
        f"api_key={REDACTED} and password: '{REDACTED}'"
    )


def test_langfuse_env_secret_values_are_masked_anywhere() -> None:
    env = {"STRIPE_SECRET": "whsec_zzzzzz", "GITHUB_TOKEN": "plain-token-value", "DB_KEY": "s3cr3t-db",
           "PORT": "8080", "DEBUG_KEY": "1", "HOME": "/root"}
    assert set(secret_env_values(env)) == {"whsec_zzzzzz", "plain-token-value", "s3cr3t-db"}
    r = Redactor(env)
    assert r.text("x whsec_zzzzzz y plain-token-value z s3cr3t-db port 8080 home /root 1") == (
        f"x {REDACTED} y {REDACTED} z {REDACTED} port 8080 home /root 1"
    )


def test_langfuse_structures_and_harmless_keys() -> None:
    r = Redactor()
    data = {
        "Authorization": "Basic dXNlcjpwYXNz",
        "x-api-key": "anything-goes-here",
        "client_secret": "abc",
        "max_tokens": 64,  # a count, not a credential
        "usage": {"input_tokens": 3, "output_tokens": 4},
        "nested": [{"token": "t0k3n-value"}, "sk-" + "z" * 30],
        "note": "the tokenizer splits words",
    }
    out = r.scrub(data)
    assert out["Authorization"] == out["x-api-key"] == out["client_secret"] == REDACTED
    assert out["max_tokens"] == 64 and out["usage"] == {"input_tokens": 3, "output_tokens": 4}
    assert out["nested"] == [{"token": REDACTED}, REDACTED]
    assert out["note"] == "the tokenizer splits words"


class _NoShortcut(Redactor):
    """The regexes on every string, as before the trigger prefilter."""

    def text(self, value: str) -> str:
        if len(value) < 6:
            return value
        value = self._tokens.sub(REDACTED, value)
        from synthhost_langfuse.redact import _ASSIGNMENT

        return _ASSIGNMENT.sub(lambda m: m.group(1) + REDACTED, value)


def test_langfuse_the_prefilter_never_changes_what_is_masked() -> None:
    """Skipping strings without a trigger is only a shortcut: every shape, in any case,
    wrapped in prose or JSON, with an env secret, masks exactly as the regexes do."""
    env = {"STRIPE_SECRET": "whsec_zzzzzz", "MY_SERVICE_KEY": "Plain-Value-42"}
    fast, slow = Redactor(env), _NoShortcut(env)
    pieces = [*SECRETS, "api_key=abc123xyz", "API-KEY: 'zzzzzzzz'", "Token = qwertyuiop", "PASSWD=hunter22",
              "x-api-key: abcdefgh", "whsec_zzzzzz", "Plain-Value-42", "bearer   abcdef0123456789",
              "BASIC dXNlcjpwYXNzd29yZA==", "GITHUB_PAT_" + "a" * 40, "github_pat_" + "a" * 40,
              "\u017fecret=abcdefgh", "Summarise quarterly report #12 in three bullet points.", "gpt-4o-mini",
              "36835a2a6c68caca0000000000000001", "ask-me-anything-please-now", "risk-free-investment-advice"]
    samples = [*pieces, *(f"before {p} after" for p in pieces), *(p.upper() for p in pieces),
               *(p.lower() for p in pieces), *(f'{{"k": "{p}"}}' for p in pieces)]
    for sample in samples:
        assert fast.text(sample) == slow.text(sample), sample
