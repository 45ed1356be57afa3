"""Notification routing (pure): config, routes, templates, rate limit and de-duplication.

The notifier (``fraud.sinks.notify.service``) reads events from Kafka, and for every route whose
topic,
format and type filter match it renders a template into a ``Notification`` per recipient, then
de-duplicates, rate-limits and hands it to a sender (``email``, ``sms``). Everything here is
pure: no I/O except reading the config file, no clock reads (callers pass ``now`` in seconds).

Two event formats: ``alert`` (``fraud.v1.Alert`` protobuf, rendered over the alert's key facts,
see ``ALERT_FIELDS``) and ``json`` (one JSON object per message, rendered over its top-level
fields). So the same sink sends fraud alerts and, say, a welcome email on a "user-signups" topic.
"""

from __future__ import annotations

import json
import math
import os
import string
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from fraud.contracts.currency import EXPONENTS
from fraud.v1.alert_pb2 import Alert
from fraud.v1.decision_pb2 import Action

__all__ = [
    "ALERT_FIELDS",
    "BUILTIN_TEMPLATES",
    "Channel",
    "ConfigError",
    "Deduper",
    "DeliveryConfig",
    "Event",
    "EventError",
    "Format",
    "Notification",
    "NotifyConfig",
    "RateLimiter",
    "Route",
    "Secret",
    "SendError",
    "SmsConfig",
    "SmtpConfig",
    "Template",
    "alert_facts",
    "decode_event",
    "load_config",
    "parse_config",
    "plan",
    "render",
]

Channel = Literal["email", "sms"]
Format = Literal["alert", "json"]
CHANNELS: tuple[Channel, ...] = ("email", "sms")
FORMATS: tuple[Format, ...] = ("alert", "json")

# The placeholders an alert template may use (``${name}``).
ALERT_FIELDS: tuple[str, ...] = (
    "alert_id",
    "type",
    "action",
    "score",
    "transaction_id",
    "customer_id",
    "terminal_id",
    "amount",
    "currency",
    "event_time",
    "created_at",
    "rules",
    "reasons",
    "model_version",
    "rules_version",
)

# Used when an alert route names no template: the alert's type, else "fraud.alert".
GENERIC_ALERT_TEMPLATE = "fraud.alert"
_ALERT_BODY = """\
Transaction: ${transaction_id}
Customer:    ${customer_id}
Amount:      ${amount} ${currency}
Terminal:    ${terminal_id}
Time:        ${event_time}
Score:       ${score}
Rules:       ${rules}
Reasons:     ${reasons}
Alert:       ${alert_id}
"""


class ConfigError(ValueError):
    """The notifier config is invalid; the message names the offending key."""


class EventError(ValueError):
    """A message cannot be decoded as the route's format."""


class SendError(Exception):
    """A send failed; ``retryable`` says whether trying again may help."""

    def __init__(self, reason: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


class Secret:
    """A credential read from the environment; its repr never shows the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Template:
    name: str
    subject: string.Template
    body: string.Template

    def placeholders(self) -> set[str]:
        return set(self.subject.get_identifiers()) | set(self.body.get_identifiers())


def _template(name: str, subject: str, body: str) -> Template:
    tpl = Template(name, string.Template(subject), string.Template(body))
    for part, text in (("subject", tpl.subject), ("body", tpl.body)):
        if not text.is_valid():
            raise ConfigError(
                f"templates.{name}.{part}: invalid placeholder syntax "
                "(use ${field}, and $$ for a literal $)"
            )
    return tpl


BUILTIN_TEMPLATES: dict[str, Template] = {
    "fraud.review": _template(
        "fraud.review",
        "Review needed: ${amount} ${currency} at ${terminal_id} (score ${score})",
        "A card payment needs review.\n\n" + _ALERT_BODY,
    ),
    "fraud.block": _template(
        "fraud.block",
        "Blocked: ${amount} ${currency} at ${terminal_id} (score ${score})",
        "A card payment was blocked as likely fraud.\n\n" + _ALERT_BODY,
    ),
    GENERIC_ALERT_TEMPLATE: _template(
        GENERIC_ALERT_TEMPLATE,
        "Fraud alert ${type}: ${amount} ${currency} at ${terminal_id}",
        "Fraud alert ${type} (action ${action}).\n\n" + _ALERT_BODY,
    ),
}


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    sender: str
    port: int = 25
    starttls: bool = False
    username: str | None = None
    password: Secret | None = None
    timeout_s: float = 10.0


@dataclass(frozen=True)
class SmsConfig:
    url: str
    token: Secret | None = None
    timeout_s: float = 5.0


@dataclass(frozen=True)
class DeliveryConfig:
    """In-process retries of a failed send (bounded: the notifier must keep moving)."""

    attempts: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 5.0
    # Consecutive failed notifications that open a channel's circuit breaker, and how long it
    # stays open (notifications meanwhile go straight to the dead letters).
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0


@dataclass(frozen=True)
class Route:
    name: str
    topic: str
    format: Format
    channel: Channel
    template: str | None = None  # None: alert routes pick by alert type
    types: frozenset[str] | None = None
    to: tuple[str, ...] = ()
    to_field: str | None = None
    lookup_recipients: bool = False
    dedupe_key: str | None = None
    dedupe_window_s: float = 0.0
    rate_limit_per_minute: float = 0.0

    def matches_type(self, event_type: str | None) -> bool:
        return self.types is None or (event_type is not None and event_type in self.types)

    def template_for(self, event_type: str | None) -> str:
        if self.template is not None:
            return self.template
        return event_type or GENERIC_ALERT_TEMPLATE


@dataclass(frozen=True)
class NotifyConfig:
    routes: tuple[Route, ...]
    templates: Mapping[str, Template]
    recipients: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    smtp: SmtpConfig | None = None
    sms: SmsConfig | None = None
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)

    @property
    def topics(self) -> tuple[str, ...]:
        """The distinct route topics, in config order (names as written, not prefixed)."""
        return tuple(dict.fromkeys(r.topic for r in self.routes))

    def template(self, route: Route, event_type: str | None) -> Template:
        name = route.template_for(event_type)
        tpl = self.templates.get(name)
        if tpl is None and route.template is None:
            tpl = self.templates[GENERIC_ALERT_TEMPLATE]
        if tpl is None:  # parse_config checks names, so only for hand-built configs
            raise ConfigError(f"route {route.name!r}: no template {name!r}")
        return tpl


# ---------------------------------------------------------------------------------------------
# Config loading and validation


def load_config(path: Path, env: Mapping[str, str] | None = None) -> NotifyConfig:
    """Read and validate a TOML config; credentials come from ``env`` (default os.environ)."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read notifier config {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        return parse_config(raw, env)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


_TOP_KEYS = {
    "smtp",
    "sms",
    "route",
    "templates",
    "recipients",
    "delivery",
    "rate_limit_per_minute",
    "dedupe_window_s",
}
_ROUTE_KEYS = {
    "name",
    "topic",
    "format",
    "channel",
    "types",
    "template",
    "to",
    "to_field",
    "lookup_recipients",
    "dedupe_key",
    "dedupe_window_s",
    "rate_limit_per_minute",
}


def _check_keys(where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _table(raw: Mapping[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}{key}: must be a table")
    return value


def _str(table: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}: a non-empty string is required")
    return value


def _opt_str(table: Mapping[str, Any], key: str, where: str) -> str | None:
    if key not in table:
        return None
    return _str(table, key, where)


def _bool(table: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: must be true or false")
    return value


def _num(
    table: Mapping[str, Any], key: str, where: str, default: float, *, positive: bool = False
) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}.{key}: must be a number")
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"{where}.{key}: must be {'> 0' if positive else '>= 0'}")
    return float(value)


def _int(table: Mapping[str, Any], key: str, where: str, default: int, minimum: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}.{key}: must be an integer >= {minimum}")
    return value


def _secret(
    table: Mapping[str, Any], key: str, where: str, env: Mapping[str, str]
) -> Secret | None:
    name = _opt_str(table, key, where)
    if name is None:
        return None
    value = env.get(name)
    if not value:
        raise ConfigError(f"{where}.{key}: environment variable {name} is not set")
    return Secret(value)


def _parse_smtp(raw: Mapping[str, Any], env: Mapping[str, str]) -> SmtpConfig | None:
    table = _table(raw, "smtp", "")
    if table is None:
        return None
    w = "smtp"
    _check_keys(w, table, {"host", "port", "starttls", "username", "password_env", "sender",
                           "timeout_s"})  # fmt: skip
    username = _opt_str(table, "username", w)
    password = _secret(table, "password_env", w, env)
    if username is not None and password is None:
        raise ConfigError("smtp.username is set but smtp.password_env is not")
    sender = _str(table, "sender", w)
    if "\n" in sender or "\r" in sender:
        raise ConfigError("smtp.sender: must be one line")
    return SmtpConfig(
        host=_str(table, "host", w),
        sender=sender,
        port=_int(table, "port", w, 25, 1),
        starttls=_bool(table, "starttls", w, False),
        username=username,
        password=password,
        timeout_s=_num(table, "timeout_s", w, 10.0, positive=True),
    )


def _parse_sms(raw: Mapping[str, Any], env: Mapping[str, str]) -> SmsConfig | None:
    table = _table(raw, "sms", "")
    if table is None:
        return None
    _check_keys("sms", table, {"url", "token_env", "timeout_s"})
    url = _str(table, "url", "sms")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"sms.url: must be an http(s) URL: {url!r}")
    return SmsConfig(
        url=url,
        token=_secret(table, "token_env", "sms", env),
        timeout_s=_num(table, "timeout_s", "sms", 5.0, positive=True),
    )


def _parse_delivery(raw: Mapping[str, Any]) -> DeliveryConfig:
    table = _table(raw, "delivery", "") or {}
    w = "delivery"
    _check_keys(w, table, {"attempts", "backoff_s", "max_backoff_s", "breaker_failures",
                           "breaker_reset_s"})  # fmt: skip
    d = DeliveryConfig()
    return DeliveryConfig(
        attempts=_int(table, "attempts", w, d.attempts, 1),
        backoff_s=_num(table, "backoff_s", w, d.backoff_s),
        max_backoff_s=_num(table, "max_backoff_s", w, d.max_backoff_s),
        breaker_failures=_int(table, "breaker_failures", w, d.breaker_failures, 1),
        breaker_reset_s=_num(table, "breaker_reset_s", w, d.breaker_reset_s),
    )


def _parse_templates(raw: Mapping[str, Any]) -> dict[str, Template]:
    templates = dict(BUILTIN_TEMPLATES)
    table = _table(raw, "templates", "") or {}
    for name, spec in table.items():
        w = f"templates.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{w}: must be a table with subject and body")
        _check_keys(w, spec, {"subject", "body"})
        subject = spec.get("subject", "")
        if not isinstance(subject, str):
            raise ConfigError(f"{w}.subject: must be a string")
        templates[name] = _template(name, subject, _str(spec, "body", w))
    return templates


def _parse_recipients(raw: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """``id = "address"`` (any channel) or ``id = { email = "...", sms = "..." }``."""
    table = _table(raw, "recipients", "") or {}
    out: dict[str, dict[str, str]] = {}
    for key, value in table.items():
        w = f"recipients.{key}"
        if isinstance(value, str):
            out[key] = {"email": value, "sms": value}
        elif isinstance(value, dict):
            _check_keys(w, value, set(CHANNELS))
            out[key] = {ch: _str(value, ch, w) for ch in CHANNELS if ch in value}
        else:
            raise ConfigError(f"{w}: must be a string or a table with email and/or sms")
    return out


def _parse_route(
    i: int, spec: Any, defaults: Mapping[str, Any], templates: Mapping[str, Template]
) -> Route:
    w = f"route[{i}]"
    if not isinstance(spec, dict):
        raise ConfigError(f"{w}: must be a table ([[route]])")
    _check_keys(w, spec, _ROUTE_KEYS)
    name = _str(spec, "name", w, default=f"route{i}")
    w = f"route {name!r}"
    fmt = spec.get("format", "alert")
    if fmt not in FORMATS:
        raise ConfigError(f"{w}.format: must be one of {', '.join(FORMATS)}, not {fmt!r}")
    channel = spec.get("channel")
    if channel not in CHANNELS:
        raise ConfigError(f"{w}.channel: must be one of {', '.join(CHANNELS)}, not {channel!r}")
    types_raw = spec.get("types")
    types: frozenset[str] | None = None
    if types_raw is not None:
        if isinstance(types_raw, str):
            types_raw = [types_raw]
        if not isinstance(types_raw, list) or not all(isinstance(t, str) and t for t in types_raw):
            raise ConfigError(f"{w}.types: must be a list of strings")
        types = frozenset(types_raw)
    to_raw = spec.get("to", [])
    if isinstance(to_raw, str):
        to_raw = [to_raw]
    if not isinstance(to_raw, list) or not all(isinstance(t, str) and t for t in to_raw):
        raise ConfigError(f"{w}.to: must be a string or a list of strings")
    for address in to_raw:
        if not valid_recipient(channel, address):
            raise ConfigError(f"{w}.to: {address!r} is not a valid {channel} recipient")
    to_field = _opt_str(spec, "to_field", w)
    if to_raw and to_field:
        raise ConfigError(f"{w}: give either to or to_field, not both")
    lookup_default = False
    if not to_raw and not to_field:
        if fmt != "alert":
            raise ConfigError(
                f"{w}: needs to (fixed recipients) or to_field (a field of the event)"
            )
        to_field, lookup_default = "customer_id", True  # alerts: the customer, via [recipients]
    lookup = _bool(spec, "lookup_recipients", w, lookup_default)
    template = _opt_str(spec, "template", w)
    if template is None and fmt == "json":
        raise ConfigError(f'{w}.template: required for format = "json"')
    if template is not None and template not in templates:
        raise ConfigError(f"{w}.template: no template {template!r} ([templates.{template}])")
    dedupe_key = _opt_str(spec, "dedupe_key", w)
    if dedupe_key is not None and fmt == "alert":
        raise ConfigError(f"{w}.dedupe_key: alerts de-duplicate on (customer, type); remove it")
    route = Route(
        name=name,
        topic=_str(spec, "topic", w),
        format=fmt,
        channel=channel,
        template=template,
        types=types,
        to=tuple(to_raw),
        to_field=to_field,
        lookup_recipients=lookup,
        dedupe_key=dedupe_key,
        dedupe_window_s=_num(spec, "dedupe_window_s", w, defaults["dedupe_window_s"]),
        rate_limit_per_minute=_num(
            spec, "rate_limit_per_minute", w, defaults["rate_limit_per_minute"]
        ),
    )
    _check_route_templates(route, templates)
    return route


def _check_route_templates(route: Route, templates: Mapping[str, Template]) -> None:
    """Alert placeholders are known in advance: an unknown one is a config error."""
    if route.format != "alert":
        return
    if route.template is not None:
        names = {route.template}
    elif route.types is not None:
        names = {t if t in templates else GENERIC_ALERT_TEMPLATE for t in route.types}
    else:
        names = {n for n in templates if n.startswith("fraud.")} | {GENERIC_ALERT_TEMPLATE}
    for name in sorted(names):
        tpl = templates[name]
        unknown = sorted(tpl.placeholders() - set(ALERT_FIELDS))
        if unknown:
            raise ConfigError(
                f"route {route.name!r}: template {name!r} uses unknown alert field(s) "
                f"{', '.join('${' + u + '}' for u in unknown)}; "
                f"known: {', '.join(ALERT_FIELDS)}"
            )
        if route.channel == "email" and not tpl.subject.template:
            raise ConfigError(f"route {route.name!r}: template {name!r} needs a subject for email")


def parse_config(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> NotifyConfig:
    """Validate a parsed TOML document; see ``load_config``."""
    env = os.environ if env is None else env
    _check_keys("config", raw, _TOP_KEYS)
    defaults = {
        "rate_limit_per_minute": _num(raw, "rate_limit_per_minute", "config", 0.0),
        "dedupe_window_s": _num(raw, "dedupe_window_s", "config", 0.0),
    }
    templates = _parse_templates(raw)
    routes_raw = raw.get("route", [])
    if not isinstance(routes_raw, list) or not routes_raw:
        raise ConfigError("config: at least one [[route]] is required")
    routes = tuple(_parse_route(i, r, defaults, templates) for i, r in enumerate(routes_raw))
    names = [r.name for r in routes]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"config: duplicate route name(s) {', '.join(dup)}")
    smtp = _parse_smtp(raw, env)
    sms = _parse_sms(raw, env)
    for route in routes:
        if route.channel == "email" and smtp is None:
            raise ConfigError(f"route {route.name!r}: channel email needs an [smtp] table")
        if route.channel == "sms" and sms is None:
            raise ConfigError(f"route {route.name!r}: channel sms needs an [sms] table")
    return NotifyConfig(
        routes=routes,
        templates=templates,
        recipients=_parse_recipients(raw),
        smtp=smtp,
        sms=sms,
        delivery=_parse_delivery(raw),
    )


# ---------------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True)
class Event:
    """A decoded message: ``facts`` (flat, for templates) and ``doc`` (nested, for to_field)."""

    type: str | None
    facts: Mapping[str, str]
    doc: Mapping[str, Any]
    # Alerts: the customer id, the default de-duplication subject.
    subject_id: str | None = None


def _amount(amount_minor: int, currency: str) -> str:
    exp = EXPONENTS.get(currency, 2)
    return f"{Decimal(amount_minor).scaleb(-exp):.{exp}f}"


def _iso_utc(ms: int) -> str:
    if ms <= 0:
        return ""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.isoformat(timespec="milliseconds" if ms % 1000 else "seconds").replace("+00:00", "Z")


def _reasons(alert: Alert) -> str:
    parts = []
    for r in alert.decision.reasons:
        text = r.code or r.feature
        if r.feature and r.code:
            text += f" ({r.feature}={r.value:g})"
        elif r.feature:
            text += f"={r.value:g}"
        parts.append(text)
    return "; ".join(p for p in parts if p) or "-"


def _action(action: int) -> str:
    try:
        return Action.Name(action)
    except ValueError:
        return str(action)


def alert_facts(alert: Alert) -> dict[str, str]:
    """The flat key facts of an alert, as strings (see ``ALERT_FIELDS``)."""
    d = alert.decision
    return {
        "alert_id": alert.alert_id,
        "type": alert.type,
        "action": _action(d.action),
        "score": f"{d.score:.3f}",
        "transaction_id": d.transaction_id,
        "customer_id": d.customer_id,
        "terminal_id": d.terminal_id,
        "amount": _amount(d.amount_minor, d.currency),
        "currency": d.currency,
        "event_time": _iso_utc(d.event_time_ms),
        "created_at": _iso_utc(alert.created_at_ms),
        "rules": ", ".join(d.rules_fired) or "-",
        "reasons": _reasons(alert),
        "model_version": d.model_version,
        "rules_version": d.rules_version,
    }


def _flat(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def decode_event(fmt: Format, value: bytes | None) -> Event:
    """Decode one message value as ``fmt``; raises EventError with the reason."""
    if not value:
        raise EventError("empty message")
    if fmt == "alert":
        alert = Alert()
        try:
            alert.ParseFromString(value)
        except DecodeError as exc:
            raise EventError(f"not a fraud.v1.Alert: {exc}") from None
        if not alert.type and not alert.alert_id:
            raise EventError("not a fraud.v1.Alert: no alert_id and no type")
        facts = alert_facts(alert)
        doc: dict[str, Any] = json_format.MessageToDict(alert, preserving_proto_field_name=True)
        return Event(alert.type or None, facts, {**doc, **facts}, alert.decision.customer_id)
    try:
        obj = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise EventError(f"not a JSON object but {type(obj).__name__}")
    event_type = obj.get("type")
    return Event(
        event_type if isinstance(event_type, str) else None,
        {str(k): _flat(v) for k, v in obj.items()},
        obj,
    )


def field_value(doc: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (``"decision.customer_id"``), or None."""
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def valid_recipient(channel: Channel, address: str) -> bool:
    """One address per recipient: no separators or line breaks that would fan out a message."""
    if not address or any(c in address for c in "\r\n,;<>\"' \t"):
        return False
    if channel == "email":
        local, _, domain = address.partition("@")
        return bool(local) and "." in domain.strip(".") and "@" not in domain
    return len(address) <= 64


# ---------------------------------------------------------------------------------------------
# Rendering and planning


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str
    missing: tuple[str, ...] = ()  # placeholders left visible (JSON events without the field)


def render(template: Template, facts: Mapping[str, str]) -> Rendered:
    """Substitute ``${field}``; an unknown field stays visible as ``${field}``."""
    missing = tuple(sorted(template.placeholders() - set(facts)))
    subject = template.subject.safe_substitute(facts)
    subject = " ".join(subject.split())  # one header line: no CR/LF from the event
    return Rendered(subject, template.body.safe_substitute(facts), missing)


@dataclass(frozen=True)
class Notification:
    """One message to one recipient, ready for a sender."""

    route: str
    channel: Channel
    to: str
    subject: str
    body: str
    dedupe_key: tuple[str, ...] | None
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skipped:
    """A route matched but nothing can be sent (no or invalid recipient)."""

    route: str
    reason: str


def _recipients(config: NotifyConfig, route: Route, event: Event) -> list[str] | Skipped:
    if route.to:
        return list(route.to)
    assert route.to_field is not None
    value = field_value(event.doc, route.to_field)
    values: list[Any] = value if isinstance(value, list) else [value]
    out: list[str] = []
    for v in values:
        if v is None or v == "":
            continue
        if not isinstance(v, str):
            v = _flat(v)
        if route.lookup_recipients:
            entry = config.recipients.get(v, {})
            if route.channel not in entry:
                return Skipped(route.name, f"no_recipient: no {route.channel} for {v!r}")
            v = entry[route.channel]
        if not valid_recipient(route.channel, v):
            return Skipped(route.name, f"invalid_recipient: {v!r} is not a {route.channel}")
        out.append(v)
    if not out:
        return Skipped(route.name, f"no_recipient: field {route.to_field!r} is empty")
    return out


def _dedupe_subject(route: Route, event: Event) -> str | None:
    if route.dedupe_window_s <= 0:
        return None
    if route.format == "alert":
        return event.subject_id
    if route.dedupe_key is None:
        return None
    value = field_value(event.doc, route.dedupe_key)
    return None if value is None else _flat(value)


def plan(
    config: NotifyConfig, routes: Iterable[Route], event: Event
) -> list[Notification | Skipped]:
    """The notifications ``event`` asks for on ``routes`` (the routes of its topic)."""
    out: list[Notification | Skipped] = []
    for route in routes:
        if not route.matches_type(event.type):
            continue
        recipients = _recipients(config, route, event)
        if isinstance(recipients, Skipped):
            out.append(recipients)
            continue
        rendered = render(config.template(route, event.type), event.facts)
        subject_id = _dedupe_subject(route, event)
        for to in recipients:
            key = None if subject_id is None else (route.name, to, subject_id, event.type or "")
            out.append(
                Notification(
                    route.name,
                    route.channel,
                    to,
                    rendered.subject,
                    rendered.body,
                    key,
                    rendered.missing,
                )
            )
    return out


# ---------------------------------------------------------------------------------------------
# Rate limit and de-duplication (clock injected: ``now`` in seconds)


class RateLimiter:
    """Token bucket per key: ``per_minute`` tokens of capacity, refilled continuously.

    ``per_minute <= 0`` disables the limit. Full buckets are forgotten (they carry no state),
    so memory stays proportional to recently active recipients.
    """

    def __init__(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._checks = 0

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.per_minute, now))
        return min(self.per_minute, tokens + max(0.0, now - at) * self.per_minute / 60.0)

    def allow(self, key: str, now: float) -> bool:
        """Take a token for ``key`` if there is one."""
        if self.per_minute <= 0:
            return True
        self._checks += 1
        if self._checks % 1024 == 0:
            self._forget_full(now)
        tokens = self._tokens(key, now)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def _forget_full(self, now: float) -> None:
        for key in [k for k in self._buckets if self._tokens(k, now) >= self.per_minute]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class Deduper:
    """One notification per key within ``window_s`` of the last one sent.

    ``is_duplicate`` only asks; ``record`` is called once the notification went out, so a failed
    send does not suppress the next attempt. Expired keys are dropped as time passes.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._sent: dict[tuple[str, ...], float] = {}
        self._checks = 0

    def is_duplicate(self, key: tuple[str, ...] | None, now: float) -> bool:
        if key is None or self.window_s <= 0:
            return False
        self._checks += 1
        if self._checks % 1024 == 0:
            self._expire(now)
        at = self._sent.get(key)
        return at is not None and now - at < self.window_s

    def record(self, key: tuple[str, ...] | None, now: float) -> None:
        if key is not None and self.window_s > 0:
            self._sent[key] = now

    def _expire(self, now: float) -> None:
        for key in [k for k, at in self._sent.items() if now - at >= self.window_s]:
            del self._sent[key]

    def __len__(self) -> int:
        return len(self._sent)
