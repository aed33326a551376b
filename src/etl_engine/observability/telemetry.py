"""Tracing: OpenTelemetry SDK, exported over OTLP/HTTP when ``ETL_OTLP_ENDPOINT`` is set.

Off (the default) there is nothing to pay for: no provider, no instrumentation, and the
helpers here return ``None`` hooks or a shared null context instead of no-op spans.

On, one trace follows an upload: ``publish`` (CLI, W3C ``traceparent`` in the AMQP
headers) -> ``process {queue}`` (worker) -> parse, dedup (Redis spans), download (S3
spans), compute (decode, validate, transform: timed in the child process, recorded here),
write (S3 spans) -> ``ack``. Retries and dead-letters re-inject the context, so a retried
or replayed message stays in the same trace.

Spans never carry personal data: attributes are ids we mint, queue names, routing keys and
reason codes. Exception text is never recorded (its class is); a scrubbing exporter also
drops exception messages, stack traces and URLs that instrumentation libraries may add.

Why the publish/consume spans are hand-made: the only aio-pika instrumentation on PyPI
(0.43b0) declares ``aio_pika < 10`` (so ``instrument()`` refuses aio-pika 10), emits the
pre-1.24 messaging attribute names, and ends its consume span when the consumer callback
returns, which for this worker is before the message is processed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.utils import (
    is_instrumentation_enabled,
    suppress_instrumentation,
)
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode

from etl_engine import __version__
from etl_engine.observability.logs import error_class

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

TRACEPARENT = "traceparent"
SCOPE = "etl_engine"
_STAGE_NAMES = {"process": "compute"}  # the pipeline's CPU stage group
_DROP_ATTRIBUTES = frozenset({
    "exception.message", "exception.stacktrace", "url.full", "http.url", "http.target",
    "url.path", "url.query",
})
_SAFE_DESCRIPTION = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")  # "Class:reason_code", no prose

_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_root_sampler: Any = None  # the swappable ratio sampler of the traces this process starts


# --- set-up -------------------------------------------------------------------------------
def configure(
    endpoint: str, service_name: str, *, instance_id: str = "",
    exporter: SpanExporter | None = None, sample_ratio: float = 1.0,
) -> bool:
    """Install the SDK once per process; returns whether tracing is on.

    ``sample_ratio``: share of the traces this process starts that are kept (by trace id);
    a span under a remote parent (a publisher's traceparent) follows the parent's
    decision. ``set_sample_ratio`` changes it at run time (a configuration reload)."""
    global _provider, _tracer, _root_sampler
    if _provider is not None:
        return True
    if not endpoint and exporter is None:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased

    attrs = {"service.name": service_name, "service.version": __version__}
    if instance_id:
        attrs["service.instance.id"] = instance_id
    _root_sampler = _swappable_ratio(sample_ratio)
    provider = TracerProvider(resource=Resource.create(attrs),
                              sampler=ParentBased(root=_root_sampler))
    inner = exporter or OTLPSpanExporter(endpoint=traces_url(endpoint), timeout=5)
    provider.add_span_processor(
        BatchSpanProcessor(_scrubbing(inner), schedule_delay_millis=2000)
    )
    trace.set_tracer_provider(provider)
    BotocoreInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    RedisInstrumentor().instrument(tracer_provider=provider)
    _provider = provider
    _tracer = provider.get_tracer(SCOPE, __version__)
    return True


def set_sample_ratio(ratio: float) -> None:
    """The new share of root traces kept, from the next trace on (no-op with tracing off)."""
    if _root_sampler is not None:
        _root_sampler.set_ratio(ratio)


def _swappable_ratio(ratio: float) -> Any:
    """A trace-id ratio sampler whose ratio can be replaced atomically (one attribute)."""
    from opentelemetry.sdk.trace.sampling import Sampler, SamplingResult, TraceIdRatioBased

    class SwappableRatio(Sampler):
        def __init__(self) -> None:
            self.inner = TraceIdRatioBased(ratio)

        def set_ratio(self, value: float) -> None:
            self.inner = TraceIdRatioBased(value)

        def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
            return self.inner.should_sample(*args, **kwargs)

        def get_description(self) -> str:
            return f"SwappableRatio{{{self.inner.rate}}}"

    return SwappableRatio()


def traces_url(endpoint: str) -> str:
    """``http://jaeger:4318`` -> ``http://jaeger:4318/v1/traces`` (a full URL is kept)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def enabled() -> bool:
    return _tracer is not None


def shutdown() -> None:
    """Flush and stop: call before the process exits or the last batch is lost."""
    if _provider is not None:
        with contextlib.suppress(Exception):
            _provider.shutdown()


# --- spans --------------------------------------------------------------------------------
@contextlib.contextmanager
def span(
    name: str, *, kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None, parent: otel_context.Context | None = None,
) -> Iterator[trace.Span | None]:
    """A current span, or ``None`` when tracing is off or quieted (``quiet``). Errors:
    class name only."""
    if _tracer is None or not is_instrumentation_enabled():
        yield None
        return
    with _tracer.start_as_current_span(
        name, context=parent, kind=kind, attributes=dict(attributes or {}),
        record_exception=False, set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except Exception as exc:
            mark_error(current, exc)
            raise


def mark_error(current: trace.Span | None, exc: BaseException) -> None:
    if current is not None:
        current.set_attribute("error.type", type(exc).__name__)
        current.set_status(Status(StatusCode.ERROR, error_class(exc)))


def stage_span(name: str) -> contextlib.AbstractContextManager[Any]:
    """The pipeline's ``tracer_span`` hook: one child span per stage."""
    return span(_STAGE_NAMES.get(name, name), attributes={"etl.stage": name})


def pipeline_hook() -> Any:
    """``stage_span`` when tracing is on, else ``None`` (the pipeline then skips spans)."""
    return stage_span if _tracer is not None else None


def quiet() -> contextlib.AbstractContextManager[Any]:
    """No library spans inside: background checks would each start a one-span trace."""
    if _tracer is None:
        return contextlib.nullcontext()
    return suppress_instrumentation()


def record_stages(times: Mapping[str, tuple[int, int]]) -> None:
    """Spans for work timed elsewhere (the decode child process): wall-clock ns pairs."""
    if _tracer is None:
        return
    for name, (start, end) in times.items():
        done = _tracer.start_span(name, start_time=start, attributes={"etl.stage": name})
        done.end(end_time=end)


def set_attributes(current: trace.Span | None, **attributes: Any) -> None:
    if current is not None:
        current.set_attributes({k: v for k, v in attributes.items() if v is not None})


# --- propagation over AMQP headers --------------------------------------------------------
class _HeaderGetter(Getter[Mapping[str, Any]]):
    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        if isinstance(value, bytes | bytearray):
            value = bytes(value).decode("latin-1")
        return [str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


def inject(headers: MutableMapping[str, Any], *, replace: bool = True) -> None:
    """Write the current context as ``traceparent`` (only when tracing is on)."""
    if _tracer is None or (not replace and TRACEPARENT in headers):
        return
    propagate.inject(headers)


def extract(headers: Mapping[str, Any]) -> otel_context.Context:
    """The remote parent from AMQP headers (works with tracing off: used for log ids)."""
    if TRACEPARENT not in headers:
        return otel_context.Context()
    return propagate.extract(headers, getter=_GETTER)


def trace_id(parent: otel_context.Context | None = None) -> str | None:
    """The current trace id as 32 hex digits, else the remote parent's, else ``None``."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid and parent is not None:
        ctx = trace.get_current_span(parent).get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def messaging_attributes(
    operation: str, destination: str, *, routing_key: str | None = None,
    message_id: str | None = None, queue: str | None = None,
    body_size: int | None = None,
) -> dict[str, Any]:
    """Messaging semantic-convention attributes for RabbitMQ (no personal data).

    The correlation id is left out on purpose: it comes from the upload service and we
    cannot vouch for what it contains.
    """
    attrs: dict[str, Any] = {
        "messaging.system": "rabbitmq",
        "messaging.operation": operation,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": destination,
    }
    optional = {
        "messaging.rabbitmq.destination.routing_key": routing_key,
        "messaging.message.id": message_id,
        "messaging.destination.subscription.name": queue,
        "messaging.message.body.size": body_size,
    }
    attrs.update({k: v for k, v in optional.items() if v not in (None, "")})
    return attrs


# --- export -------------------------------------------------------------------------------
def _scrubbing(inner: SpanExporter) -> SpanExporter:
    """Wrap an exporter: exception text, stack traces and URLs are dropped before export.

    Our own spans never set them; instrumentation libraries may (botocore puts the error
    text, which can contain an object key, in the status and exception events). Defined
    here so the SDK is imported only when tracing is on.
    """
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class ScrubbingExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return inner.export([_scrub(s) for s in spans])

        def shutdown(self) -> None:
            inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return inner.force_flush(timeout_millis)

    return ScrubbingExporter()


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (attributes or {}).items() if k not in _DROP_ATTRIBUTES}


def _scrub(s: ReadableSpan) -> ReadableSpan:
    from opentelemetry.sdk.trace import Event, ReadableSpan

    events = [Event(e.name, _clean(e.attributes), e.timestamp) for e in s.events]
    status = s.status
    if status.description and not _SAFE_DESCRIPTION.match(status.description):
        status = Status(status.status_code)
    return ReadableSpan(
        name=s.name, context=s.context, parent=s.parent, resource=s.resource,
        attributes=_clean(s.attributes), events=events, links=s.links, kind=s.kind,
        status=status, start_time=s.start_time, end_time=s.end_time,
        instrumentation_scope=s.instrumentation_scope,
    )
