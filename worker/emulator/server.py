"""The emulator's HTTP side: Mailchimp's routes under /3.0, the /_emulator admin API, the
connection limit, fault injection and counters, on an aiohttp server."""

from __future__ import annotations

import asyncio
import base64
import copy
import fnmatch
import json
import logging
import random
import signal
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from worker.emulator.problems import ApiError, invalid, not_found
from worker.emulator.state import EmulatorState, Event, select_fields, subscriber_hash
from worker.emulator.webhooks import Dispatcher, RetryPolicy

log = logging.getLogger("worker.emulator")

API_PREFIX = "/3.0"
ADMIN_PREFIX = "/_emulator"
PROBLEM_CT = "application/problem+json"
# Fault kinds: problem+json errors, Mailchimp's CDN 502 page, bodiless answers the SDK
# returns without raising, a read timeout (the call still lands later), dropped connections.
FAULT_KINDS = (
    "500",
    "502",
    "503",
    "429",
    "429_empty",
    "403_empty",
    "timeout",
    "drop",
    "drop_after",
    "unsubscribe_first",
)
LIMIT_RESPONSES = ("problem", "429_empty", "403_empty")
BAD_GATEWAY_HTML = (
    "<html><head><title>502 Bad Gateway</title></head>\n"
    "<body><center><h1>502 Bad Gateway</h1></center>\n"
    "<hr><center>AkamaiGHost</center></body></html>\n"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Script:
    """A scripted one-off failure: the next ``remaining`` calls matching path/method fail."""

    path: str
    kind: str
    remaining: int
    method: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and (self.method is None or self.method.upper() == method)
            and fnmatch.fnmatchcase(path, self.path)
        )


@dataclass
class Faults:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rates: dict[str, float] = field(default_factory=dict)
    timeout_hold_s: float = 30.0
    scripts: list[Script] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def pick(self, method: str, path: str) -> str | None:
        for script in self.scripts:
            if script.matches(method, path):
                script.remaining -= 1
                if script.remaining == 0:
                    self.scripts.remove(script)
                return script.kind
        if self.rates:
            roll = random.random()
            for kind, rate in self.rates.items():
                if roll < rate:
                    return kind
                roll -= rate
        return None


@dataclass
class EmulatorConfig:
    api_key: str | None = None
    max_connections: int = 10  # per account, as Mailchimp; 0 = unlimited
    limit_response: str = "problem"  # what the 11th simultaneous call gets
    state_file: Path | None = None
    verbose: bool = False


def problem_response(error: ApiError) -> web.Response:
    return web.Response(
        status=error.status,
        text=json.dumps(error.problem()),
        content_type=PROBLEM_CT,
        charset="utf-8",
    )


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", charset="utf-8"
    )


def too_many_requests() -> ApiError:
    return ApiError(
        429, "TooManyRequests", "You have exceeded the limit of 10 simultaneous connections."
    )


class Emulator:
    """State, faults, counters and the dispatcher of one running emulator."""

    def __init__(
        self,
        state: EmulatorState,
        config: EmulatorConfig | None = None,
        faults: Faults | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.state = state
        self.config = config or EmulatorConfig()
        self.faults = faults or Faults()
        self.initial_faults = copy.deepcopy(self.faults)
        self.initial_limits = (self.config.max_connections, self.config.limit_response)
        self.dispatcher = Dispatcher(retry)
        self.in_flight = 0
        self.peak_in_flight = 0
        self.peak_attempted = 0
        self.calls: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.faults_injected: dict[str, int] = defaultdict(int)
        self.limit_rejections = 0
        #: The shortest and longest latency applied to a call since the counters' reset, so
        #: a test can check the model without timing calls against a wall clock.
        self.delay_ms: list[float] = []

    # ---- counters ---------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        return {
            "calls": {k: dict(v) for k, v in self.calls.items()},
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "peak_attempted": self.peak_attempted,
            "limit_rejections": self.limit_rejections,
            "delay_ms": {"min": min(self.delay_ms), "max": max(self.delay_ms)}
            if self.delay_ms
            else None,
            "faults_injected": dict(self.faults_injected),
            "members": self.state.member_counts(),
            "confirmations_sent": {
                a.id: a.confirmations_sent for a in self.state.audiences.values()
            },
            "webhooks": {**self.dispatcher.counters, "in_progress": self.dispatcher.pending()},
        }

    def reset_counters(self) -> None:
        self.calls.clear()
        self.faults_injected.clear()
        self.peak_in_flight = self.in_flight
        self.peak_attempted = self.in_flight
        self.limit_rejections = 0
        self.delay_ms = []
        self.dispatcher.reset()

    def fire(self, events: list[Event]) -> None:
        if not events:
            return
        hooks = [h for a in self.state.audiences.values() for h in a.webhooks.values()]
        self.dispatcher.dispatch(hooks, events)

    # ---- the middleware: limit, latency, faults, auth ----------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX + "/") and request.path != API_PREFIX:
            try:
                return await handler(request)
            except ApiError as exc:
                return problem_response(exc)
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else request.path
        key = f"{request.method} {canonical.removeprefix(API_PREFIX)}"
        limit = self.config.max_connections
        self.peak_attempted = max(self.peak_attempted, self.in_flight + 1)
        if limit and self.in_flight >= limit:
            self.limit_rejections += 1
            rejected = self._limit_response()
            self.calls[key][str(rejected.status)] += 1
            return rejected
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        status = "error"
        try:
            resp, status = await self._handle(request, handler)
            return resp
        finally:
            self.in_flight -= 1
            self.calls[key][status] += 1

    def _limit_response(self) -> web.Response:
        mode = self.config.limit_response
        if mode == "429_empty":
            return web.Response(status=429)
        if mode == "403_empty":
            return web.Response(status=403)
        return problem_response(too_many_requests())

    async def _handle(
        self, request: web.Request, handler: Handler
    ) -> tuple[web.StreamResponse, str]:
        if request.can_read_body:
            # Read the body now: a call held by a 'timeout' fault must still land after the
            # client has hung up, when the body could no longer be read.
            await request.read()
        delay = self.faults.latency_ms + random.uniform(0, self.faults.jitter_ms)
        if delay > 0:
            self.delay_ms = [min([delay, *self.delay_ms]), max([delay, *self.delay_ms])]
            await asyncio.sleep(delay / 1000)
        kind = self.faults.pick(request.method, request.path)
        if kind is not None:
            self.faults_injected[kind] += 1
            early = await self._early_fault(request, kind)
            if early is not None:
                return early
        resp: web.StreamResponse
        try:
            self._check_auth(request)
            resp = await handler(request)
        except ApiError as exc:
            resp = problem_response(exc)
        if kind == "drop_after":
            return self._drop(request), "drop_after"
        return resp, str(resp.status)

    async def _early_fault(
        self, request: web.Request, kind: str
    ) -> tuple[web.StreamResponse, str] | None:
        if kind == "500":
            return problem_response(
                ApiError(
                    500,
                    "Internal Server Error",
                    "An unexpected internal error has occurred. "
                    "Please contact Support for more information.",
                )
            ), "500"
        if kind == "502":
            return web.Response(status=502, text=BAD_GATEWAY_HTML, content_type="text/html"), "502"
        if kind == "503":
            return problem_response(
                ApiError(
                    503,
                    "Service Unavailable",
                    "The service is temporarily unavailable. Please try again later.",
                )
            ), "503"
        if kind == "429":
            return problem_response(too_many_requests()), "429"
        if kind == "429_empty":
            return web.Response(status=429), "429"
        if kind == "403_empty":
            return web.Response(status=403), "403"
        if kind == "drop":
            return self._drop(request), "drop"
        if kind == "unsubscribe_first":
            # Not a fault: the person unsubscribes (as from a campaign's link) just before
            # this call about them is applied, the way a click can land between a client's
            # read and its write. The call then proceeds.
            list_id = request.match_info.get("list_id", "")
            key = request.match_info.get("subscriber_hash", "")
            audience = self.state.audiences.get(list_id)
            member = audience.members.get(key.lower()) if audience is not None else None
            if member is not None:
                self.fire(self.state.person_unsubscribe(list_id, member.email_address))
            return None
        if kind == "timeout":
            # The client gives up, but the call still runs here and holds its connection
            # slot, as docs/mailchimp.md warns; it lands after the hold.
            await asyncio.sleep(self.faults.timeout_hold_s)
        return None

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            transport.abort()
        # aiohttp skips writing to an aborted transport; the client sees a reset.
        return web.Response(status=499)

    def _check_auth(self, request: web.Request) -> None:
        header = request.headers.get("Authorization")
        if not header:
            raise ApiError(401, "API Key Missing", "Your request did not include an API key.")
        key: str | None
        if header.lower().startswith("bearer "):
            key = header[7:].strip()
        else:
            try:
                decoded = base64.b64decode(header.split(" ", 1)[1], validate=True).decode()
                key = decoded.partition(":")[2]
            except (IndexError, ValueError):
                key = None
        if not key or (self.config.api_key is not None and key != self.config.api_key):
            raise ApiError(
                401,
                "API Key Invalid",
                "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
            )


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(
            400, "JSON Parse Error", "We encountered an unspecified JSON parsing error."
        ) from None


def _csv(request: web.Request, name: str) -> list[str] | None:
    value = request.query.get(name)
    return [v.strip() for v in value.split(",")] if value else None


def _int(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise invalid(f"The value of '{name}' must be an integer.") from None


def _flag(request: web.Request, name: str) -> bool | None:
    """A boolean query parameter. The SDK sends Python's True/False, so case is ignored."""
    value = request.query.get(name)
    if value is None or value == "":
        return None
    if value.lower() not in ("true", "false"):
        raise invalid(f"The value of '{name}' must be true or false.")
    return value.lower() == "true"


def _skip_merge(request: web.Request) -> bool:
    return bool(_flag(request, "skip_merge_validation"))


def _shaped(request: web.Request, body: Any) -> web.Response:
    return json_response(
        select_fields(body, _csv(request, "fields"), _csv(request, "exclude_fields"))
    )


class Api:
    """Handlers for the Mailchimp routes the emulator covers."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.state = emu.state

    def routes(self) -> list[web.RouteDef]:
        p = API_PREFIX
        member = p + "/lists/{list_id}/members/{subscriber_hash}"
        merge = p + "/lists/{list_id}/merge-fields"
        category = p + "/lists/{list_id}/interest-categories"
        interests = category + "/{interest_category_id}/interests"
        return [
            web.get(p + "/ping", self.ping),
            web.get(p + "/lists", self.get_lists),
            web.get(p + "/lists/{list_id}", self.get_list),
            web.post(p + "/lists/{list_id}", self.batch),
            web.get(p + "/lists/{list_id}/members", self.list_members),
            web.post(p + "/lists/{list_id}/members", self.add_member),
            web.get(member, self.get_member),
            web.put(member, self.put_member),
            web.patch(member, self.patch_member),
            web.delete(member, self.delete_member),
            web.post(member + "/actions/delete-permanent", self.delete_permanent),
            web.get(member + "/tags", self.get_tags),
            web.post(member + "/tags", self.post_tags),
            web.get(merge, self.get_merge_fields),
            web.post(merge, self.add_merge_field),
            web.get(merge + "/{merge_id}", self.get_merge_field),
            web.get(category, self.get_interest_categories),
            web.post(category, self.add_interest_category),
            web.get(category + "/{interest_category_id}", self.get_interest_category),
            web.get(interests, self.get_interests),
            web.post(interests, self.add_interest),
            web.get(interests + "/{interest_id}", self.get_interest),
            web.patch(interests + "/{interest_id}", self.update_interest),
            web.get(p + "/lists/{list_id}/webhooks", self.get_webhooks),
            web.post(p + "/lists/{list_id}/webhooks", self.create_webhook),
            web.get(p + "/lists/{list_id}/webhooks/{webhook_id}", self.get_webhook),
            web.delete(p + "/lists/{list_id}/webhooks/{webhook_id}", self.delete_webhook),
            web.route("*", p + "/{tail:.*}", self.not_implemented),
            web.route("*", p, self.not_implemented),
        ]

    async def ping(self, request: web.Request) -> web.Response:
        return json_response({"health_status": "Everything's Chimpy!"})

    async def get_lists(self, request: web.Request) -> web.Response:
        lists = [a.to_json() for a in self.state.audiences.values()]
        return _shaped(request, {"lists": lists, "total_items": len(lists)})

    async def get_list(self, request: web.Request) -> web.Response:
        return _shaped(request, self.state.audience(request.match_info["list_id"]).to_json())

    async def batch(self, request: web.Request) -> web.Response:
        result, events = self.state.batch_subscribe(
            request.match_info["list_id"], await _body(request), _skip_merge(request)
        )
        self.emu.fire(events)
        return json_response(result)

    async def list_members(self, request: web.Request) -> web.Response:
        q = request.query
        result = self.state.list_members(
            request.match_info["list_id"],
            status=q.get("status") or None,
            since_last_changed=q.get("since_last_changed") or None,
            before_last_changed=q.get("before_last_changed") or None,
            count=_int(request, "count", 10),
            offset=_int(request, "offset", 0),
            sort_dir=q.get("sort_dir", "ASC"),
        )
        return _shaped(request, result)

    async def add_member(self, request: web.Request) -> web.Response:
        member, events = self.state.add_member(
            request.match_info["list_id"], await _body(request), _skip_merge(request)
        )
        self.emu.fire(events)
        return json_response(self.state.member_json(member))

    async def get_member(self, request: web.Request) -> web.Response:
        m = request.match_info
        member = self.state.member(m["list_id"], m["subscriber_hash"])
        return _shaped(request, self.state.member_json(member))

    async def put_member(self, request: web.Request) -> web.Response:
        m = request.match_info
        member, _, events = self.state.upsert_member(
            m["list_id"], m["subscriber_hash"], await _body(request), _skip_merge(request)
        )
        self.emu.fire(events)
        return json_response(self.state.member_json(member))

    async def patch_member(self, request: web.Request) -> web.Response:
        m = request.match_info
        member, events = self.state.patch_member(
            m["list_id"], m["subscriber_hash"], await _body(request), _skip_merge(request)
        )
        self.emu.fire(events)
        return json_response(self.state.member_json(member))

    async def delete_member(self, request: web.Request) -> web.Response:
        m = request.match_info
        self.emu.fire(self.state.archive_member(m["list_id"], m["subscriber_hash"]))
        return web.Response(status=204)

    async def delete_permanent(self, request: web.Request) -> web.Response:
        m = request.match_info
        self.emu.fire(self.state.delete_permanent(m["list_id"], m["subscriber_hash"]))
        return web.Response(status=204)

    async def get_tags(self, request: web.Request) -> web.Response:
        m = request.match_info
        tags = self.state.member_tags(
            m["list_id"],
            m["subscriber_hash"],
            _int(request, "count", 10),
            _int(request, "offset", 0),
        )
        return _shaped(request, tags)

    async def post_tags(self, request: web.Request) -> web.Response:
        m = request.match_info
        self.state.update_tags(m["list_id"], m["subscriber_hash"], await _body(request))
        return web.Response(status=204)

    # ---- merge fields -----------------------------------------------------------------
    async def get_merge_fields(self, request: web.Request) -> web.Response:
        result = self.state.merge_fields(
            request.match_info["list_id"],
            _int(request, "count", 10),
            _int(request, "offset", 0),
            kind=request.query.get("type") or None,
            required=_flag(request, "required"),
        )
        return _shaped(request, result)

    async def add_merge_field(self, request: web.Request) -> web.Response:
        list_id = request.match_info["list_id"]
        created = self.state.add_merge_field(list_id, await _body(request))
        return json_response(created.to_json(list_id))

    async def get_merge_field(self, request: web.Request) -> web.Response:
        m = request.match_info
        mf = self.state.merge_field(m["list_id"], m["merge_id"])
        return _shaped(request, mf.to_json(m["list_id"]))

    # ---- groups -----------------------------------------------------------------------
    async def get_interest_categories(self, request: web.Request) -> web.Response:
        result = self.state.interest_categories(
            request.match_info["list_id"],
            _int(request, "count", 10),
            _int(request, "offset", 0),
            kind=request.query.get("type") or None,
        )
        return _shaped(request, result)

    async def add_interest_category(self, request: web.Request) -> web.Response:
        list_id = request.match_info["list_id"]
        category = self.state.add_interest_category(list_id, await _body(request))
        return json_response(category.to_json(list_id))

    async def get_interest_category(self, request: web.Request) -> web.Response:
        m = request.match_info
        category = self.state.interest_category(m["list_id"], m["interest_category_id"])
        return _shaped(request, category.to_json(m["list_id"]))

    async def get_interests(self, request: web.Request) -> web.Response:
        m = request.match_info
        result = self.state.interests(
            m["list_id"],
            m["interest_category_id"],
            _int(request, "count", 10),
            _int(request, "offset", 0),
        )
        return _shaped(request, result)

    async def add_interest(self, request: web.Request) -> web.Response:
        m = request.match_info
        interest = self.state.add_interest(
            m["list_id"], m["interest_category_id"], await _body(request)
        )
        return json_response(self.state.interest_json(m["list_id"], interest))

    async def get_interest(self, request: web.Request) -> web.Response:
        m = request.match_info
        interest = self.state.interest(m["list_id"], m["interest_category_id"], m["interest_id"])
        return _shaped(request, self.state.interest_json(m["list_id"], interest))

    async def update_interest(self, request: web.Request) -> web.Response:
        m = request.match_info
        interest = self.state.update_interest(
            m["list_id"], m["interest_category_id"], m["interest_id"], await _body(request)
        )
        return json_response(self.state.interest_json(m["list_id"], interest))

    async def get_webhooks(self, request: web.Request) -> web.Response:
        audience = self.state.audience(request.match_info["list_id"])
        hooks = [h.to_json() for h in audience.webhooks.values()]
        return _shaped(
            request, {"webhooks": hooks, "list_id": audience.id, "total_items": len(hooks)}
        )

    async def get_webhook(self, request: web.Request) -> web.Response:
        m = request.match_info
        return _shaped(request, self.state.webhook(m["list_id"], m["webhook_id"]).to_json())

    async def create_webhook(self, request: web.Request) -> web.Response:
        list_id = request.match_info["list_id"]
        url, events, sources = self.state.validate_webhook(list_id, await _body(request))
        if not await self.emu.dispatcher.check_url(url):
            raise invalid(
                "The resource submitted could not be validated. "
                "For field-specific details, see the 'errors' array.",
                [
                    {
                        "field": "url",
                        "message": "We couldn't verify the URL is working. "
                        "Please double check and try again.",
                    }
                ],
            )
        hook = self.state.add_webhook(list_id, url, events, sources)
        return json_response(hook.to_json(with_secret=True))

    async def delete_webhook(self, request: web.Request) -> web.Response:
        m = request.match_info
        self.state.delete_webhook(m["list_id"], m["webhook_id"])
        return web.Response(status=204)

    async def not_implemented(self, request: web.Request) -> web.Response:
        raise ApiError(
            501,
            "Not Implemented",
            f"The emulator does not implement {request.method} {request.path}; "
            "see docs/emulator.md for what it covers.",
        )


class Admin:
    """The /_emulator admin API: faults, person actions, seeding, counters."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.state = emu.state

    def routes(self) -> list[web.RouteDef]:
        a = ADMIN_PREFIX
        return [
            web.get(a + "/health", self.health),
            web.get(a + "/counters", self.get_counters),
            web.post(a + "/counters/reset", self.reset_counters),
            web.get(a + "/faults", self.get_faults),
            web.put(a + "/faults", self.put_faults),
            web.post(a + "/faults/reset", self.reset_faults),
            web.post(a + "/faults/script", self.script_fault),
            web.get(a + "/settings", self.get_settings),
            web.put(a + "/settings", self.put_settings),
            web.post(a + "/clock", self.clock),
            web.post(a + "/save", self.save),
            web.post(a + "/lists", self.create_list),
            web.get(a + "/lists/{list_id}", self.get_list),
            web.post(a + "/lists/{list_id}/members", self.seed_member),
            web.get(a + "/lists/{list_id}/members/{member}", self.get_member),
            web.patch(a + "/lists/{list_id}/interests/{interest_id}", self.rename_interest),
            web.post(a + "/lists/{list_id}/actions/{action}", self.person_action),
            web.post(a + "/lists/{list_id}/throttle", self.throttle),
            web.get(a + "/webhooks/deliveries", self.deliveries),
            web.get(a + "/webhooks/delivery", self.get_delivery),
            web.put(a + "/webhooks/delivery", self.put_delivery),
        ]

    async def _json(self, request: web.Request) -> dict[str, Any]:
        body = await _body(request)
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise invalid("The admin API takes a JSON object.")
        return body

    async def health(self, request: web.Request) -> web.Response:
        return json_response({"ok": True, "lists": list(self.state.audiences)})

    async def get_counters(self, request: web.Request) -> web.Response:
        return json_response(self.emu.counters())

    async def reset_counters(self, request: web.Request) -> web.Response:
        self.emu.reset_counters()
        return json_response(self.emu.counters())

    async def get_faults(self, request: web.Request) -> web.Response:
        return json_response(self._faults_json())

    def _faults_json(self) -> dict[str, Any]:
        return {
            **self.emu.faults.to_json(),
            "max_connections": self.emu.config.max_connections,
            "limit_response": self.emu.config.limit_response,
        }

    async def put_faults(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        faults = self.emu.faults
        for name in ("latency_ms", "jitter_ms", "timeout_hold_s"):
            if name in body:
                setattr(faults, name, float(body[name]))
        if "rates" in body:
            rates = {str(k): float(v) for k, v in dict(body["rates"]).items() if float(v) > 0}
            unknown = set(rates) - set(FAULT_KINDS)
            if unknown or sum(rates.values()) > 1:
                raise invalid(f"rates: kinds are {FAULT_KINDS} and must sum to at most 1.")
            faults.rates = rates
        if "max_connections" in body:
            self.emu.config.max_connections = int(body["max_connections"])
        if "limit_response" in body:
            if body["limit_response"] not in LIMIT_RESPONSES:
                raise invalid(f"limit_response must be one of {LIMIT_RESPONSES}.")
            self.emu.config.limit_response = body["limit_response"]
        return json_response(self._faults_json())

    async def reset_faults(self, request: web.Request) -> web.Response:
        # Back to the command-line configuration.
        self.emu.faults = copy.deepcopy(self.emu.initial_faults)
        self.emu.config.max_connections, self.emu.config.limit_response = self.emu.initial_limits
        return json_response(self._faults_json())

    async def script_fault(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        kind = str(body.get("kind", ""))
        if kind not in FAULT_KINDS:
            raise invalid(f"kind must be one of {FAULT_KINDS}.")
        script = Script(
            path=str(body.get("path", API_PREFIX + "/*")),
            kind=kind,
            remaining=int(body.get("count", 1)),
            method=body.get("method"),
        )
        self.emu.faults.scripts.append(script)
        return json_response(self._faults_json())

    async def get_settings(self, request: web.Request) -> web.Response:
        return json_response(self._settings())

    def _settings(self) -> dict[str, Any]:
        s = self.state
        return {
            "allow_pending_resubscribe": s.allow_pending_resubscribe,
            "batch_unsubscribed": s.batch_unsubscribed,
            "sign_webhooks": s.sign_webhooks,
            "unknown_merge_fields": s.unknown_merge_fields,
            "skip_merge_validation": s.skip_merge_validation,
            "fake_domains": sorted(s.fake_domains),
            "webhook_retry": asdict(self.emu.dispatcher.policy),
        }

    async def put_settings(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        s = self.state
        if "allow_pending_resubscribe" in body:
            s.allow_pending_resubscribe = bool(body["allow_pending_resubscribe"])
        if "batch_unsubscribed" in body:
            if body["batch_unsubscribed"] not in ("ignore", "error"):
                raise invalid("batch_unsubscribed must be 'ignore' or 'error'.")
            s.batch_unsubscribed = body["batch_unsubscribed"]
        if "sign_webhooks" in body:
            s.sign_webhooks = bool(body["sign_webhooks"])
        if "unknown_merge_fields" in body:
            if body["unknown_merge_fields"] not in ("error", "ignore"):
                raise invalid("unknown_merge_fields must be 'error' or 'ignore'.")
            s.unknown_merge_fields = body["unknown_merge_fields"]
        if "skip_merge_validation" in body:
            if body["skip_merge_validation"] not in ("required", "all"):
                raise invalid("skip_merge_validation must be 'required' or 'all'.")
            s.skip_merge_validation = body["skip_merge_validation"]
        if "fake_domains" in body:
            s.fake_domains = frozenset(str(d).lower() for d in body["fake_domains"])
        policy = self.emu.dispatcher.policy
        for name, value in dict(body.get("webhook_retry") or {}).items():
            if name not in ("timeout_s", "first_delay_s", "factor", "max_attempts"):
                raise invalid(f"Unknown webhook_retry setting {name!r}.")
            setattr(policy, name, int(value) if name == "max_attempts" else float(value))
        return json_response(self._settings())

    async def clock(self, request: web.Request) -> web.Response:
        from datetime import timedelta

        body = await self._json(request)
        self.state.clock_offset += timedelta(seconds=float(body.get("advance_seconds", 0)))
        return json_response({"now": self.state.now().isoformat()})

    async def save(self, request: web.Request) -> web.Response:
        path = self.emu.config.state_file
        if path is None:
            raise invalid("The emulator was started without --state-file.")
        self.state.save(path)
        return json_response({"saved": str(path)})

    async def create_list(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        audience = self.state.add_audience(
            body.get("id"),
            bool(body.get("double_optin", False)),
            name=str(body.get("name") or ""),
            merge_fields=body.get("merge_fields"),
            interest_categories=body.get("interest_categories"),
            marketing_permissions=body.get("marketing_permissions"),
        )
        return json_response(self._audience_view(audience.id))

    async def get_list(self, request: web.Request) -> web.Response:
        return json_response(self._audience_view(request.match_info["list_id"]))

    def _audience_view(self, list_id: str) -> dict[str, Any]:
        """The audience as the API shows it, plus what a test needs to know about it: its
        shape with every id (merge fields, groups with their interests, GDPR permissions)."""
        audience = self.state.audience(list_id)
        shape = audience.shape
        return {
            **audience.to_json(),
            "confirmations_sent": audience.confirmations_sent,
            "forgotten": len(audience.forgotten),
            "webhooks": [h.to_json(with_secret=True) for h in audience.webhooks.values()],
            "shape": {
                "merge_fields": [mf.to_json(list_id) for mf in shape.ordered_merge_fields()],
                "interest_categories": [
                    {
                        **c.to_json(list_id),
                        "interests": [self.state.interest_json(list_id, i) for i in c.ordered()],
                    }
                    for c in shape.ordered_categories()
                ],
                "marketing_permissions": [
                    {"marketing_permission_id": p.id, "text": p.text}
                    for p in shape.permissions.values()
                ],
            },
        }

    async def rename_interest(self, request: web.Request) -> web.Response:
        """A rename in Mailchimp's UI: the interest keeps its id, clients holding the old name
        must look again."""
        list_id = request.match_info["list_id"]
        body = await self._json(request)
        interest = self.state.update_interest(
            list_id, None, request.match_info["interest_id"], {"name": body.get("name")}
        )
        return json_response(self.state.interest_json(list_id, interest))

    async def seed_member(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        email = body.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise invalid("email is required.")
        member = self.state.seed_member(
            request.match_info["list_id"],
            email,
            str(body.get("status", "subscribed")),
            body.get("merge_fields"),
            body.get("last_changed"),
        )
        if member is None:
            return json_response({"id": subscriber_hash(email), "status": "forgotten"})
        return json_response(self.state.member_json(member))

    async def get_member(self, request: web.Request) -> web.Response:
        list_id, key = request.match_info["list_id"], request.match_info["member"]
        key_hash = subscriber_hash(key) if "@" in key else key.lower()
        audience = self.state.audience(list_id)
        member = audience.members.get(key_hash)
        if member is not None:
            # The API's view (tags, interests, language, permissions) plus the groups by name.
            view = self.state.member_json(member)
            view["groups"] = audience.shape.groups(member.interests)
            return json_response(view)
        if key_hash in audience.forgotten:
            return json_response({"id": key_hash, "status": "forgotten"})
        raise not_found()

    async def person_action(self, request: web.Request) -> web.Response:
        list_id, action = request.match_info["list_id"], request.match_info["action"]
        body = await self._json(request)
        email = str(body.get("email", ""))
        s = self.state
        campaign = str(body.get("campaign_id", ""))
        merges = dict(body.get("merge_fields") or {})
        if action == "signup":
            events = s.person_signup(list_id, email, merges)
        elif action == "unsubscribe":
            events = s.person_unsubscribe(list_id, email, campaign, "manual")
        elif action == "complain":
            events = s.person_unsubscribe(list_id, email, campaign, "abuse")
        elif action == "bounce":
            events = s.person_bounce(list_id, email, campaign)
        elif action == "change-email":
            events = s.person_change_email(list_id, email, str(body.get("new_email", "")))
        elif action == "edit-profile":
            events = s.person_edit_profile(list_id, email, merges)
        elif action == "confirm":
            events = s.person_confirm(list_id, email)
        else:
            raise not_found()
        self.emu.fire(events)
        return json_response({"events": [e.type for e in events]})

    async def throttle(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        self.state.throttled.add(str(body.get("email", "")).lower())
        return json_response({"throttled": sorted(self.state.throttled)})

    async def deliveries(self, request: web.Request) -> web.Response:
        return json_response([d.to_json() for d in self.emu.dispatcher.deliveries])

    async def get_delivery(self, request: web.Request) -> web.Response:
        d = self.emu.dispatcher
        return json_response({"enabled": d.enabled, "blocked_emails": sorted(d.blocked_emails)})

    async def put_delivery(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        d = self.emu.dispatcher
        if "enabled" in body:
            d.enabled = bool(body["enabled"])
        if "blocked_emails" in body:
            d.blocked_emails = {str(e).lower() for e in body["blocked_emails"]}
        return await self.get_delivery(request)


EMULATOR_KEY = web.AppKey("emulator", Emulator)


def build_app(emu: Emulator) -> web.Application:
    app = web.Application(middlewares=[emu.middleware], client_max_size=16 * 1024**2)
    app[EMULATOR_KEY] = emu
    app.add_routes(Admin(emu).routes())
    app.add_routes(Api(emu).routes())

    async def close_dispatcher(_: web.Application) -> None:
        await emu.dispatcher.close()

    app.on_cleanup.append(close_dispatcher)
    return app


async def serve(
    emu: Emulator,
    host: str,
    port: int,
    on_ready: Callable[[int], None],
) -> None:
    """Run until SIGINT/SIGTERM; save state (if configured) on the way out."""
    app = build_app(emu)
    runner = web.AppRunner(
        app,
        access_log=log if emu.config.verbose else None,
        handle_signals=False,
        # Calls held by a 'timeout' fault must not delay a stop.
        shutdown_timeout=1.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    on_ready(bound)
    try:
        await stop.wait()
    finally:
        if emu.config.state_file is not None:
            emu.state.save(emu.config.state_file)
        await runner.cleanup()
