"""The Redis store: shared state for many processes and machines, every decision one Lua script.

Every read-check-write runs inside one script (see
:mod:`bastion.stores._redis_lua`), so it is atomic without locks or ``WATCH``
retries. Rate limits run on the server's clock (``TIME`` inside the script),
so clients on different machines agree on every window; ``clock=`` replaces it
for tests only.

Throughput: redis-py spends more per command than Redis spends on a small
script, so rate-limit decisions that pile up while one call is in flight are
sent together as the next call (``batch=True``, the default; see
:mod:`bastion.stores._coalesce`) -- a lone decision still goes out at once,
and each decision in a batch is still made atomically. Batching puts
different limited keys in one script call, which Redis Cluster refuses: use
``batch=False`` there.

Keys start with ``namespace`` (default ``bastion``) and the scope path. The
keys one decision touches share a hash tag: a rate-limit key's keys sit in
one slot per limited key; all budget keys of one namespace sit in one slot (a
reservation touches several caps at once).

The client is built with retries off: a command re-sent after a lost reply
could run its script twice. Each operation is bounded by ``timeout`` (default
1 s), queueing for a connection included; a dead or stalled server becomes
``StoreUnavailableError`` within it. redis-py is imported only when a Redis
store is made (``pip install 'bastion[redis]'``). Needs Redis >= 7.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, cast

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import ConfigurationError
from bastion._core.validate import positive_number
from bastion.stores._approval_store import (
    Approval,
    ApprovalPage,
    ApprovalRequest,
    ApprovalStatus,
    as_of,
    encode_arguments,
)
from bastion.stores._approval_store import page_of as approval_page
from bastion.stores._base import call_store
from bastion.stores._budget_store import CapCharge, ReserveMode, ReserveOutcome
from bastion.stores._checkpoint_store import Checkpoint
from bastion.stores._coalesce import Coalescer
from bastion.stores._idempotency_store import Claim, StoredResponse, decode_headers, encode_headers
from bastion.stores._keys import ScopedView, escape, scope_path
from bastion.stores._ratelimit import WindowSpec
from bastion.stores._redis_listen import RedisListener
from bastion.stores._redis_lua import (
    APPROVAL_CREATE,
    APPROVAL_DECIDE,
    APPROVAL_FIELDS,
    APPROVAL_GET,
    APPROVAL_LIST,
    BUDGET_COMMITTED,
    BUDGET_RELEASE,
    BUDGET_RESERVE,
    BUDGET_SETTLE,
    CHECKPOINT_LOAD,
    CHECKPOINT_SAVE,
    IDEMPOTENCY_CLAIM,
    IDEMPOTENCY_RELEASE,
    IDEMPOTENCY_STORE,
    RATE_LIMIT,
    SESSION_APPEND,
    SESSION_CREATE,
    SESSION_DELETE,
    SESSION_LIST,
    SESSION_LOAD,
)
from bastion.stores._session_store import SessionData, SessionNotFound, SessionPage, page_of
from bastion.stores._wakeup import Notifier, Wakeup
from bastion.stores._window_log import WindowDecision, check_costs, until

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["RedisStore", "import_redis"]


def import_redis() -> Any:
    """``redis.asyncio``, or an ImportError that says which extra to install."""
    try:
        import redis.asyncio as redis_asyncio
    except ImportError as exc:
        msg = "the Redis store needs redis-py: pip install 'bastion[redis]'"
        raise ImportError(msg) from exc
    return redis_asyncio


def refuse_retries(client: Any, option: str) -> None:
    """Refuse a client that would re-send a command whose reply was lost.

    A script re-sent that way may already have run: a reservation or a
    settlement counted twice. redis-py retries per connection -- its
    ``retry`` (10 times by default when built as ``Redis(...)``), or once
    when there is none but ``retry_on_timeout`` / ``retry_on_error`` is set.
    """
    get_retry = getattr(client, "get_retry", None)
    get_kwargs = getattr(client, "get_connection_kwargs", None)
    if get_retry is None or get_kwargs is None:
        return  # not a redis-py client we can inspect; its owner vouches for it
    retry = get_retry()
    kwargs = get_kwargs()
    if retry is not None:
        retries = retry.get_retries()
    elif kwargs.get("retry_on_timeout") or kwargs.get("retry_on_error"):
        retries = 1
    else:
        retries = 0
    if retries != 0:
        msg = (
            f"{option} retries commands ({retries} retries): a script whose reply was lost "
            "would run again and could count twice. Build the client with retries off: "
            "redis.asyncio.Redis(..., retry=Retry(NoBackoff(), 0)) (Retry from "
            "redis.asyncio.retry, NoBackoff from redis.backoff) and no retry_on_timeout / "
            "retry_on_error, or pass url= and let the store build it"
        )
        raise ConfigurationError(msg)


_Decision = tuple[list[str], list[str]]
"""The keys and arguments of one rate-limit decision (without the shared ``now``)."""


class _Shared:
    """What a root store and its scoped views share: the client, the scripts, the batcher."""

    __slots__ = (
        "client",
        "clock",
        "coalescer",
        "listener",
        "notifier",
        "owned",
        "scripts",
        "unavailable",
    )

    def __init__(
        self,
        client: Redis,
        *,
        owned: bool,
        clock: Clock | None,
        timeout: float,
        batch: bool,
        channel: str,
    ) -> None:
        import redis.exceptions as errors

        self.client = client
        self.owned = owned
        self.clock = clock
        self.scripts: dict[str, AsyncScript] = {
            name: client.register_script(source)
            for name, source in (
                ("rate_limit", RATE_LIMIT),
                ("reserve", BUDGET_RESERVE),
                ("settle", BUDGET_SETTLE),
                ("release", BUDGET_RELEASE),
                ("committed", BUDGET_COMMITTED),
                ("idem_claim", IDEMPOTENCY_CLAIM),
                ("idem_store", IDEMPOTENCY_STORE),
                ("idem_release", IDEMPOTENCY_RELEASE),
                ("ckpt_save", CHECKPOINT_SAVE),
                ("ckpt_load", CHECKPOINT_LOAD),
                ("sess_create", SESSION_CREATE),
                ("sess_append", SESSION_APPEND),
                ("sess_load", SESSION_LOAD),
                ("sess_list", SESSION_LIST),
                ("sess_delete", SESSION_DELETE),
                ("apr_create", APPROVAL_CREATE),
                ("apr_get", APPROVAL_GET),
                ("apr_decide", APPROVAL_DECIDE),
                ("apr_list", APPROVAL_LIST),
            )
        }
        self.notifier = Notifier()
        self.listener = RedisListener(
            client,
            channel=channel,
            notifier=self.notifier,
            timeout=timeout,
            clock=clock or SYSTEM_CLOCK,
        )
        lost = (errors.ConnectionError, errors.TimeoutError, OSError)
        self.unavailable: Callable[[Exception], bool] = lambda exc: isinstance(exc, lost)
        self.coalescer: Coalescer[_Decision, str] | None = (
            Coalescer(self.decide, timeout=timeout) if batch else None
        )

    def now(self) -> str:
        return "" if self.clock is None else repr(self.clock.time())

    async def decide(self, decisions: list[_Decision]) -> list[str]:
        """Run ``decisions`` in one script call; one reply string per decision."""
        keys: list[str] = []
        args: list[str] = [self.now()]
        for decision_keys, decision_args in decisions:
            keys += decision_keys
            args += decision_args
        reply = await self.scripts["rate_limit"](keys=keys, args=args)
        text = reply.decode() if isinstance(reply, bytes) else str(reply)
        return text.split(";")


class RedisStore(ScopedView):
    """Rate limits, budgets, idempotency keys, checkpoints, sessions and approvals in Redis.

    ``redis://host:port/db``.

    Give either ``url`` (the store builds and owns a client whose pool makes callers
    queue for one of ``max_connections`` connections) or ``client``
    (yours; the store never closes it -- build it with ``retry=Retry(NoBackoff(), 0)``
    so a lost reply is never answered by running a script twice: a client that
    retries is refused with a ``ConfigurationError``). ``batch=False``
    sends every rate-limit decision on its own (needed on Redis Cluster).
    """

    __slots__ = ("_budget_tag", "_namespace", "_shared", "_timeout")

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | None = None,
        namespace: str = "bastion",
        timeout: float = 1.0,
        clock: Clock | None = None,
        max_connections: int = 50,
        batch: bool = True,
    ) -> None:
        self._timeout = positive_number(timeout, "RedisStore.timeout", unit="seconds")
        redis_asyncio = import_redis()
        if (url is None) == (client is None):
            msg = (
                "RedisStore needs exactly one of url= (e.g. 'redis://localhost:6379/0') or client="
            )
            raise ConfigurationError(msg)
        if client is None:
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            pool = redis_asyncio.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                retry=Retry(NoBackoff(), 0),
            )
            client = redis_asyncio.Redis.from_pool(pool)  # the client owns (and closes) the pool
            owned = True
        else:
            refuse_retries(client, "RedisStore.client")
            owned = False
        self._namespace = escape(namespace)
        self._shared = _Shared(
            client,
            owned=owned,
            clock=clock,
            timeout=self._timeout,
            batch=batch,
            channel=f"{self._namespace}:changes",
        )
        self._scope: tuple[str, ...] = ()
        self._prefix = scope_path(())
        self._budget_tag = "{" + self._namespace + ":budget}"

    def __repr__(self) -> str:
        return f"RedisStore(namespace={self._namespace!r}, scope={self._scope!r})"

    @property
    def backend(self) -> str:
        return "redis"

    @property
    def client(self) -> Redis:
        """The redis-py client (shared by every view of this store)."""
        return self._shared.client

    async def ping(self) -> None:
        await self._call("ping", cast("Awaitable[object]", self._shared.client.ping()))

    async def aclose(self) -> None:
        await self._shared.listener.close()
        if self._shared.owned:
            await self._shared.client.aclose()

    async def _call(self, operation: str, work: Awaitable[Any]) -> Any:
        return await call_store("redis", operation, self._timeout, work, self._shared.unavailable)

    # -- rate limits ---------------------------------------------------------------------------

    async def rate_limit(
        self, key: str, costs: Sequence[float], spec: WindowSpec
    ) -> WindowDecision:
        check_costs(costs, spec.limits, spec.names, spec.window)
        base = f"{self._namespace}:rl:{{{self._prefix}{spec.tag}:{key}}}"
        head = [spec.algorithm[0], str(len(costs)), repr(spec.window)]
        args = [*head, *map(repr, costs), *map(repr, spec.limits)]
        keys = [base + ":f"] if spec.algorithm == "fixed" else [base + ":l", base + ":s"]
        shared = self._shared
        if shared.coalescer is not None:
            work = shared.coalescer.submit((keys, args))
        else:
            work = self._decide_alone(keys, args)
        allowed, binding, limit, remaining, retry_at, reset_at, now = (
            await self._call("rate_limit", work)
        ).split(" ")
        at = float(now)
        return WindowDecision(
            allowed == "1",
            int(binding),
            float(limit),
            float(remaining),
            until(float(retry_at), at),
            until(float(reset_at), at),
            at,
        )

    async def _decide_alone(self, keys: list[str], args: list[str]) -> str:
        return (await self._shared.decide([(keys, args)]))[0]

    # -- budgets -------------------------------------------------------------------------------

    def _cap_keys(self, caps: Sequence[CapCharge]) -> list[str]:
        keys: list[str] = []
        for cap in caps:
            name = self._prefix + cap.key
            keys.append(f"{self._budget_tag}:c:{name}")
            keys.append(f"{self._budget_tag}:h:{name}")
        return keys

    async def reserve(
        self,
        reservation: str,
        caps: Sequence[CapCharge],
        amount: int,
        *,
        mode: ReserveMode,
        now: float,
        hold_until: float,
    ) -> ReserveOutcome:
        args: list[str | int] = [reservation, amount, mode, repr(now), repr(hold_until)]
        for cap in caps:
            args += [cap.limit, repr(max(cap.expires_at, hold_until))]
        script = self._shared.scripts["reserve"]
        reply = await self._call("reserve", script(keys=self._cap_keys(caps), args=args))
        return ReserveOutcome(int(reply[0]), int(reply[1]), tuple(int(v) for v in reply[2:]))

    async def settle(
        self,
        reservation: str,
        caps: Sequence[CapCharge],
        amount: int,
        *,
        now: float,
        if_held: bool = True,
    ) -> bool:
        args: list[str | int] = [reservation, amount, repr(now), int(if_held)]
        args += [repr(cap.expires_at) for cap in caps]
        script = self._shared.scripts["settle"]
        return int(await self._call("settle", script(keys=self._cap_keys(caps), args=args))) == 1

    async def release(self, reservation: str, caps: Sequence[CapCharge]) -> None:
        script = self._shared.scripts["release"]
        await self._call("release", script(keys=self._cap_keys(caps), args=[reservation]))

    async def committed(self, caps: Sequence[CapCharge], *, now: float) -> tuple[int, ...]:
        script = self._shared.scripts["committed"]
        reply = await self._call("committed", script(keys=self._cap_keys(caps), args=[repr(now)]))
        return tuple(int(v) for v in reply)

    # -- idempotency ---------------------------------------------------------------------------

    def _idempotency_key(self, key: str) -> str:
        return f"{self._namespace}:idem:{{{self._prefix}{key}}}"

    async def claim_idempotency_key(
        self, key: str, fingerprint: str, token: str, *, lock_ttl: float
    ) -> Claim:
        script = self._shared.scripts["idem_claim"]
        args = [self._shared.now(), fingerprint, token, repr(lock_ttl)]
        work = script(keys=[self._idempotency_key(key)], args=args)
        reply = [
            part.decode() if isinstance(part, bytes) and i < 4 else part
            for i, part in enumerate(await self._call("claim_idempotency_key", work))
        ]
        state, stored_fingerprint = reply[0], reply[1]
        if state == "done":
            body = reply[4]
            response = StoredResponse(
                status=int(reply[2]),
                headers=decode_headers(reply[3]),
                body=body if isinstance(body, bytes) else str(body).encode(),
            )
            return Claim("done", stored_fingerprint, response)
        return Claim("acquired" if state == "acquired" else "running", stored_fingerprint)

    async def store_idempotent_response(
        self, key: str, token: str, response: StoredResponse, *, ttl: float
    ) -> bool:
        script = self._shared.scripts["idem_store"]
        args: list[str | int | bytes] = [self._shared.now(), token, repr(ttl), response.status]
        args += [encode_headers(response.headers), response.body, self._shared.listener.channel]
        work = script(keys=[self._idempotency_key(key)], args=args)
        return int(await self._call("store_idempotent_response", work)) == 1

    async def release_idempotency_key(self, key: str, token: str) -> None:
        script = self._shared.scripts["idem_release"]
        args = [token, self._shared.listener.channel]
        work = script(keys=[self._idempotency_key(key)], args=args)
        await self._call("release_idempotency_key", work)

    def idempotency_wakeups(self, key: str) -> AbstractAsyncContextManager[Wakeup]:
        return self._shared.listener.watch(self._idempotency_key(key))

    # -- checkpoints ---------------------------------------------------------------------------

    def _checkpoint_key(self, run_id: str) -> str:
        return f"{self._namespace}:ckpt:{{{self._prefix}{run_id}}}"

    async def save_checkpoint(
        self, run_id: str, step: int, state: bytes, *, ttl: float | None
    ) -> bool:
        script = self._shared.scripts["ckpt_save"]
        args: list[str | bytes] = [self._shared.now(), str(step), state]
        args.append("" if ttl is None else repr(ttl))
        work = script(keys=[self._checkpoint_key(run_id)], args=args)
        return int(await self._call("save_checkpoint", work)) == 1

    async def load_checkpoint(self, run_id: str) -> Checkpoint | None:
        script = self._shared.scripts["ckpt_load"]
        work = script(keys=[self._checkpoint_key(run_id)], args=[self._shared.now()])
        reply = await self._call("load_checkpoint", work)
        if not reply:
            return None
        step, state, saved_at = reply
        return Checkpoint(
            run_id=run_id,
            step=int(step),
            state=state if isinstance(state, bytes) else str(state).encode(),
            saved_at=float(saved_at),
        )

    async def delete_checkpoint(self, run_id: str) -> None:
        work = self._shared.client.delete(self._checkpoint_key(run_id))
        await self._call("delete_checkpoint", work)

    # -- sessions ------------------------------------------------------------------------------

    def _session_keys(self, session_id: str) -> list[str]:
        """The session's hash, its message list and the scope's index (one hash slot)."""
        base = f"{self._namespace}:sess:{{{self._prefix}}}"
        return [f"{base}:h:{session_id}", f"{base}:m:{session_id}", f"{base}:idx"]

    async def create_session(self, session_id: str, *, ttl: float, metadata: bytes) -> None:
        script = self._shared.scripts["sess_create"]
        args: list[str | bytes] = [self._shared.now(), repr(ttl), metadata, session_id]
        await self._call("create_session", script(keys=self._session_keys(session_id), args=args))

    async def append_messages(self, session_id: str, messages: list[bytes]) -> int:
        script = self._shared.scripts["sess_append"]
        args: list[str | bytes] = [self._shared.now(), *messages]
        work = script(keys=self._session_keys(session_id), args=args)
        length = int(await self._call("append_messages", work))
        if length < 0:
            raise SessionNotFound(session_id)
        return length

    async def load_session(self, session_id: str) -> SessionData | None:
        script = self._shared.scripts["sess_load"]
        work = script(keys=self._session_keys(session_id)[:2], args=[self._shared.now()])
        reply = await self._call("load_session", work)
        if not reply:
            return None
        metadata, created_at, expires_at, messages = reply
        return SessionData(
            session_id=session_id,
            metadata=_bytes(metadata),
            messages=tuple(_bytes(message) for message in messages),
            created_at=float(created_at),
            expires_at=float(expires_at),
        )

    async def list_sessions(self, *, limit: int, cursor: str | None) -> SessionPage:
        script = self._shared.scripts["sess_list"]
        hash_key, _, index = self._session_keys("")
        args = [self._shared.now(), cursor or "", str(limit + 1), hash_key]
        reply = await self._call("list_sessions", script(keys=[index], args=args))
        return page_of([_bytes(item).decode() for item in reply], limit)

    async def delete_session(self, session_id: str) -> None:
        script = self._shared.scripts["sess_delete"]
        work = script(keys=self._session_keys(session_id), args=[session_id])
        await self._call("delete_session", work)

    async def sweep_sessions(self, now: float) -> int:
        """Nothing to do: Redis expires a session's keys itself (the index tidies on listing)."""
        return 0

    # -- approvals -----------------------------------------------------------------------------

    def _approval_keys(self, approval_id: str) -> list[str]:
        """The approval's hash and the scope's index (one hash slot per scope)."""
        base = f"{self._namespace}:apr:{{{self._prefix}}}"
        return [f"{base}:h:{approval_id}", f"{base}:idx"]

    async def create_approval(
        self, request: ApprovalRequest, *, ttl: float, keep_for: float
    ) -> tuple[Approval, bool]:
        script = self._shared.scripts["apr_create"]
        args: list[str] = [
            self._shared.now(),
            repr(ttl),
            repr(keep_for),
            request.approval_id,
            request.run_id,
            request.agent_name,
            request.tool_name,
            encode_arguments(request.tool_arguments),
            request.call_hash,
            request.risk_level,
            request.description,
            request.session_id or "",
        ]
        keys = self._approval_keys(request.approval_id)
        created, now, fields = await self._call("create_approval", script(keys=keys, args=args))
        return _approval_of(request.approval_id, fields, float(now)), int(created) == 1

    async def get_approval(self, approval_id: str) -> Approval | None:
        script = self._shared.scripts["apr_get"]
        work = script(keys=self._approval_keys(approval_id)[:1], args=[self._shared.now()])
        reply = await self._call("get_approval", work)
        if not reply:
            return None
        now, fields = reply
        return _approval_of(approval_id, fields, float(now))

    async def list_approvals(
        self, *, status: ApprovalStatus | None, limit: int, cursor: str | None
    ) -> ApprovalPage:
        script = self._shared.scripts["apr_list"]
        hash_key, index = self._approval_keys("")
        args = [self._shared.now(), cursor or "", str(limit + 1), hash_key, status or ""]
        reply = await self._call("list_approvals", script(keys=[index], args=args))
        now = float(reply[0])
        found = [
            _approval_of(_bytes(approval_id).decode(), fields, now)
            for approval_id, fields in zip(reply[1::2], reply[2::2], strict=True)
        ]
        return approval_page(found, limit)

    async def decide_approval(
        self, approval_id: str, *, approved: bool, by: str, reason: str
    ) -> tuple[Approval | None, bool]:
        script = self._shared.scripts["apr_decide"]
        key = self._approval_keys(approval_id)[0]
        args = [
            self._shared.now(),
            "approved" if approved else "rejected",
            by,
            reason,
            self._shared.listener.channel,
            key,
        ]
        reply = await self._call("decide_approval", script(keys=[key], args=args))
        if not reply:
            return None, False
        recorded, now, fields = reply
        if int(recorded) == 1:
            self._shared.notifier.notify(key)  # waiters in this process, without the round trip
        return _approval_of(approval_id, fields, float(now)), int(recorded) == 1

    def approval_wakeups(self, approval_id: str) -> AbstractAsyncContextManager[Wakeup]:
        return self._shared.listener.watch(self._approval_keys(approval_id)[0])


def _approval_of(approval_id: str, fields: Sequence[object], now: float) -> Approval:
    """The approval an approval script's ``{fields}`` reply holds, as it reads at ``now``."""
    text = dict(zip(APPROVAL_FIELDS, (_bytes(field).decode() for field in fields), strict=True))
    approval = Approval(
        approval_id=approval_id,
        run_id=text["run"],
        agent_name=text["agent"],
        tool_name=text["tool"],
        tool_arguments=json.loads(text["args"]),
        risk_level=text["risk"],  # type: ignore[arg-type]
        description=text["desc"],
        session_id=text["session"] or None,
        call_hash=text["hash"],
        status=text["status"],  # type: ignore[arg-type]
        created_at=float(text["at"]),
        expires_at=float(text["until"]),
        decided_at=float(text["dat"]) if text["dat"] else None,
        decided_by=text["by"] if text["dat"] else None,
        reason=text["reason"] if text["dat"] else None,
    )
    return as_of(approval, now)


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
