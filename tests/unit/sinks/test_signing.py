"""HMAC webhook signatures: sign / verify round trip, rotation, and every rejection reason."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from fraud.sinks.webhooks.signing import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    compute_signature,
    sign,
    verify,
)

NOW = 1_800_000_000
OLD = b"old-secret"
NEW = b"new-secret"
BODY = b'{"alert_id":"a-1","score":0.97}'


def test_round_trip() -> None:
    headers = sign([NEW], "evt-1", BODY, NOW)
    assert headers[EVENT_ID_HEADER] == "evt-1"
    assert headers[TIMESTAMP_HEADER] == str(NOW)
    assert verify([NEW], headers, BODY, now_s=NOW) == "evt-1"
    assert verify(NEW, headers, BODY, now_s=NOW) == "evt-1"  # a single secret as bytes


def test_signature_matches_an_independent_hmac() -> None:
    headers = sign([b"k"], "evt-1", b"{}", 1700000000)
    digest = hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == f"v1={digest}"
    assert compute_signature(b"k", 1700000000, b"{}") == digest


def test_rotation_signs_with_each_secret_and_either_verifies() -> None:
    headers = sign([OLD, NEW], "evt-2", BODY, NOW)
    parts = headers[SIGNATURE_HEADER].split(", ")
    assert parts == [
        f"v1={compute_signature(OLD, NOW, BODY)}",
        f"v1={compute_signature(NEW, NOW, BODY)}",
    ]
    assert verify([NEW], headers, BODY, now_s=NOW) == "evt-2"
    assert verify([OLD], headers, BODY, now_s=NOW) == "evt-2"
    assert verify([b"other", NEW], headers, BODY, now_s=NOW) == "evt-2"


def test_receiver_with_new_secret_accepts_sender_with_only_old_when_it_keeps_both() -> None:
    headers = sign([OLD], "evt-3", BODY, NOW)
    assert verify([NEW, OLD], headers, BODY, now_s=NOW) == "evt-3"
    with pytest.raises(SignatureError, match="no valid signature"):
        verify([NEW], headers, BODY, now_s=NOW)


def test_header_names_are_case_insensitive() -> None:
    headers = {k.lower(): v for k, v in sign([NEW], "evt-4", BODY, NOW).items()}
    assert verify([NEW], headers, BODY, now_s=NOW) == "evt-4"
    upper = {k.upper(): v for k, v in headers.items()}
    assert verify([NEW], upper, BODY, now_s=NOW) == "evt-4"


def test_unknown_schemes_are_ignored() -> None:
    headers = sign([NEW], "evt-5", BODY, NOW)
    headers[SIGNATURE_HEADER] = "v0=deadbeef, " + headers[SIGNATURE_HEADER] + ", v2=abc"
    assert verify([NEW], headers, BODY, now_s=NOW) == "evt-5"


def test_tampered_body_is_rejected() -> None:
    headers = sign([NEW], "evt-6", BODY, NOW)
    with pytest.raises(SignatureError, match="no valid signature"):
        verify([NEW], headers, BODY.replace(b"0.97", b"0.07"), now_s=NOW)


def test_wrong_secret_is_rejected() -> None:
    headers = sign([NEW], "evt-7", BODY, NOW)
    with pytest.raises(SignatureError, match="no valid signature"):
        verify([b"wrong", OLD], headers, BODY, now_s=NOW)


def test_rewritten_timestamp_breaks_the_signature() -> None:
    headers = sign([NEW], "evt-8", BODY, NOW - 1000)
    headers[TIMESTAMP_HEADER] = str(NOW)  # a replay with a fresh timestamp
    with pytest.raises(SignatureError, match="no valid signature"):
        verify([NEW], headers, BODY, now_s=NOW)


def test_stale_timestamp_is_rejected_at_the_tolerance_edge() -> None:
    headers = sign([NEW], "evt-9", BODY, NOW - 300)
    assert verify([NEW], headers, BODY, now_s=NOW) == "evt-9"  # exactly at the tolerance
    with pytest.raises(SignatureError, match="too old"):
        verify([NEW], headers, BODY, now_s=NOW + 1)
    with pytest.raises(SignatureError, match="too old"):
        verify([NEW], headers, BODY, now_s=NOW, tolerance_s=60)


def test_future_timestamp_is_rejected() -> None:
    headers = sign([NEW], "evt-10", BODY, NOW + 301)
    with pytest.raises(SignatureError, match="in the future"):
        verify([NEW], headers, BODY, now_s=NOW)
    assert verify([NEW], headers, BODY, now_s=NOW + 1) == "evt-10"


@pytest.mark.parametrize("name", [EVENT_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER])
def test_missing_header_is_rejected(name: str) -> None:
    headers = sign([NEW], "evt-11", BODY, NOW)
    del headers[name]
    with pytest.raises(SignatureError, match=f"missing header {name}"):
        verify([NEW], headers, BODY, now_s=NOW)
    headers[name] = "  "
    with pytest.raises(SignatureError, match=f"missing header {name}"):
        verify([NEW], headers, BODY, now_s=NOW)


@pytest.mark.parametrize("value", ["abc", "-5", "1.5e9", "1800000000.0", "١٨٠٠", "9" * 40])
def test_malformed_timestamp_is_rejected(value: str) -> None:
    headers = sign([NEW], "evt-12", BODY, NOW)
    headers[TIMESTAMP_HEADER] = value
    with pytest.raises(SignatureError, match="malformed timestamp"):
        verify([NEW], headers, BODY, now_s=NOW)


@pytest.mark.parametrize("value", ["garbage", "v1", "t=1,v0=abc", "sha256=abc"])
def test_malformed_signature_header_is_rejected(value: str) -> None:
    headers = sign([NEW], "evt-13", BODY, NOW)
    headers[SIGNATURE_HEADER] = value
    with pytest.raises(SignatureError, match="no v1= signature"):
        verify([NEW], headers, BODY, now_s=NOW)


@pytest.mark.parametrize("value", ["v1=", "v1=zz", "v1=é" * 3, "v1=" + "0" * 64])
def test_bad_signature_values_are_rejected_without_crashing(value: str) -> None:
    headers = sign([NEW], "evt-14", BODY, NOW)
    headers[SIGNATURE_HEADER] = value
    with pytest.raises(SignatureError, match="no valid signature"):
        verify([NEW], headers, BODY, now_s=NOW)


def test_too_many_signatures_are_rejected() -> None:
    headers = sign([NEW], "evt-15", BODY, NOW)
    headers[SIGNATURE_HEADER] = ", ".join(["v1=00"] * 20 + [headers[SIGNATURE_HEADER]])
    with pytest.raises(SignatureError, match="too many signatures"):
        verify([NEW], headers, BODY, now_s=NOW)


def test_signature_error_is_a_value_error() -> None:
    assert issubclass(SignatureError, ValueError)


def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        sign([], "evt", BODY, NOW)
    with pytest.raises(TypeError):
        sign(NEW, "evt", BODY, NOW)
    with pytest.raises(ValueError, match="invalid event id"):
        sign([NEW], "evt\r\nX-Injected: 1", BODY, NOW)
    with pytest.raises(ValueError, match="invalid event id"):
        sign([NEW], "", BODY, NOW)
    headers = sign([NEW], "evt", BODY, NOW)
    with pytest.raises(ValueError, match="non-empty secret"):
        verify([], headers, BODY, now_s=NOW)
    with pytest.raises(ValueError, match="non-empty secret"):
        verify(b"", headers, BODY, now_s=NOW)
