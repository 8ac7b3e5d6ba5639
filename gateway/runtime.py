"""The composition root and the process lifecycle: builds the parts, starts them, drains, stops them.

Start-up starts the ledger's flushing. On SIGTERM the gateway drains: `/readyz` answers 503 at once,
so load balancers stop sending new requests, while everything is still served for
`GATEWAY_DRAIN_SECONDS`; then uvicorn's own shutdown stops accepting connections and gives open
requests up to `GATEWAY_SHUTDOWN_TIMEOUT`; then shutdown closes upstream connections and makes the
ledger's last write. A second SIGTERM skips what is left of the drain.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from gateway.accounting.keys import Keys, KeyTable
from gateway.accounting.keystore import KeyStore
from gateway.accounting.ledger import Ledger, MemoryLedger
from gateway.accounting.ledger.recorder import LedgerRecorder
from gateway.accounting.ledger.redis import RedisLedger
from gateway.accounting.limits import Limiter, LimitSettler
from gateway.accounting.prices import PriceTable
from gateway.accounting.redis_client import redis_client, warm_up
from gateway.config import GatewayConfig, Timeouts
from gateway.observability.logs import AccessLog
from gateway.observability.metrics import CollectorPauses, MetricsObserver
from gateway.relay import Exchanges, Observer, Relay
from gateway.routing import DeploymentHealth, Router
from gateway.settings import Settings
from gateway.upstream.base import Transport
from gateway.upstream.echo import EchoTransport
from gateway.upstream.http import HttpTransport

log = logging.getLogger("gateway")

# Seconds between moving what observers hold in memory (metric sums) to where it is read.
OBSERVER_FLUSH_INTERVAL = 1.0
# Seconds shutdown waits for requests that are still finishing before it closes the ledger.
STOP_WAIT = 5.0


@dataclass
class Runtime:
    settings: Settings
    config: GatewayConfig
    keys: Keys
    router: Router
    ledger: Ledger
    transports: dict[str, Transport]
    relay: Relay
    exchanges: Exchanges
    limiter: Limiter | None = None
    redis: Any = None  # the client the key store and the limiter share
    started_at: int = field(default_factory=lambda: int(time.time()))
    _flusher: asyncio.Task[None] | None = None
    draining: bool = False

    @classmethod
    def build(cls, settings: Settings, config: GatewayConfig) -> Runtime:
        http = HttpTransport(
            pool_size=settings.upstream_pool_size,
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_read_timeout,
        )
        transports: dict[str, Transport] = {}
        for upstream in config.upstreams:
            transports[upstream.name] = EchoTransport(upstream.echo_delay_ms) if upstream.dialect == "echo" else http
        ledger: Ledger
        client = (
            redis_client(config.redis_url, timeout=settings.redis_timeout, cluster=settings.redis_cluster)
            if config.redis_url
            else None
        )
        prices = PriceTable(config.prices)
        store = KeyStore(client) if client is not None else None
        limiter = (
            Limiter(
                client,
                prices,
                reserve_output_tokens=settings.budget_reserve_tokens,
                fail_open=settings.limits_fail_open,
            )
            if client is not None
            else None
        )
        keys = Keys(KeyTable(config.keys), store, settings.key_cache_seconds)
        if config.redis_url:
            ledger = RedisLedger(
                config.redis_url,
                flush_interval=settings.ledger_flush_interval,
                timeout=settings.redis_timeout,
                cluster=settings.redis_cluster,
                spool_dir=settings.ledger_spool_dir,
                log_entries=settings.ledger_log_entries,
                queue_entries=settings.ledger_queue_entries,
                flush_entries=settings.ledger_flush_entries,
            )
        else:
            ledger = MemoryLedger()
        router = Router(config)
        relay = Relay(
            router,
            transports,
            settings.max_attempts,
            settings.max_client_retries,
            settings.retry_backoff,
            retry_after_cap=settings.retry_after_cap,
            health=DeploymentHealth(settings.cooldown_failures, settings.cooldown_seconds),
            timeouts=Timeouts(
                connect=settings.upstream_connect_timeout,
                headers=settings.upstream_headers_timeout,
                first_token=settings.upstream_first_token_timeout,
                idle=settings.upstream_read_timeout,
                total=settings.upstream_total_timeout,
            ),
        )
        observers: list[Observer] = [LedgerRecorder(ledger)]
        if limiter is not None:
            observers.append(LimitSettler(limiter))
        if settings.metrics:
            observers += [MetricsObserver(), CollectorPauses()]
        if settings.access_log:
            observers.append(AccessLog(settings.log_format))
        exchanges = Exchanges(observers, prices)
        return cls(settings, config, keys, router, ledger, transports, relay, exchanges, limiter, client)

    async def start(self) -> None:
        if self.config.redis_url:
            log.info("usage is written to Redis")
        else:
            log.warning("no redis_url configured: usage is kept in this process only and lost on restart")
        for key in self.config.keys:
            if (key.rpm or key.tpm or key.model_limits or key.budget is not None) and not self.config.redis_url:
                log.warning("key %s has limits or a budget, which need redis_url: they are not enforced", key.name)
        if any(key.budget is not None for key in self.config.keys) and not self.config.prices:
            log.warning("keys have budgets but the config has no prices: every request costs 0")
        for upstream in self.config.upstreams:
            if not upstream.enabled:
                log.warning("upstream %s is disabled: its api_key is empty", upstream.name)
        if self.redis is not None:
            await warm_up(self.redis)
        await self.ledger.start()
        gc.callbacks.extend(w for w in self._collector_watches() if w not in gc.callbacks)
        self._flusher = asyncio.create_task(self._flush_observers(), name="observer-flush")
        self._drain_on_sigterm()

    def _drain_on_sigterm(self) -> None:
        """Put a drain before the SIGTERM handler uvicorn installed (a server in the main thread only)."""
        seconds = self.settings.drain_seconds
        if not seconds or threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        uvicorn_handler = signal.getsignal(signal.SIGTERM)
        if not callable(uvicorn_handler):
            return

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            if self.draining:  # a second SIGTERM: stop draining, shut down now
                uvicorn_handler(signum, frame)
                return
            self.draining = True
            log.info("SIGTERM: draining for %.1f s (not ready, still serving), then shutting down", seconds)
            loop.call_soon_threadsafe(loop.call_later, seconds, uvicorn_handler, signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    async def _flush_observers(self) -> None:
        while True:
            await asyncio.sleep(OBSERVER_FLUSH_INTERVAL)
            self.flush_observers()

    def _collector_watches(self) -> list[CollectorPauses]:
        return [o for o in self.exchanges.observers if isinstance(o, CollectorPauses)]

    def flush_observers(self) -> None:
        """Move what observers hold in memory to where it is read; one failing never stops the others."""
        for observer in self.exchanges.observers:
            try:
                observer.flush()
            except Exception:
                log.exception("flushing %s failed", type(observer).__name__)

    async def stop(self) -> None:
        """Called once uvicorn has stopped serving: requests it cut off at its shutdown timeout may
        still be finishing (their last events, their records), so wait for them briefly first."""
        if not await self.exchanges.wait_finished(STOP_WAIT):
            log.warning("%d requests still open at shutdown", self.exchanges.open_count)
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        for watch in self._collector_watches():
            if watch in gc.callbacks:
                gc.callbacks.remove(watch)
        try:
            for transport in {id(t): t for t in self.transports.values()}.values():
                await transport.aclose()
        finally:
            try:
                await self.ledger.aclose()
                if self.limiter is not None:
                    await self.limiter.aclose()
                if self.keys.store is not None:
                    await self.keys.store.aclose()
            finally:
                for observer in self.exchanges.observers:
                    try:
                        observer.close()
                    except Exception:
                        log.exception("closing %s failed", type(observer).__name__)
