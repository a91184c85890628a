"""The rules deployment: one replica that runs the rule watcher and the webhook sender (actors/rules.py), each in a
thread that outlives any failure (Redis away, a receiver down): it says why meanwhile, waits and goes on. The
text encoder for query rules loads on the first query rule it meets."""

from __future__ import annotations

import logging
import threading

from ray import serve

from schemas.config import Settings

log = logging.getLogger(__name__)


@serve.deployment(name="rules", num_replicas=1, ray_actor_options={"num_cpus": 0.25})
class Rules:
    def __init__(self, settings: Settings):
        from actors.keys import Keys, redis_client
        from actors.metrics import Metrics
        from actors.rules import RuleWatcher, WebhookSender

        self.settings = settings
        keys = Keys(settings.redis.prefix)
        r = redis_client(settings.redis.url)
        self.metrics = Metrics(redis_client(settings.redis.url), keys).start()
        self._encoder = None
        self.watcher = RuleWatcher(r, keys, tuple(settings.rules.rules), embed=self._embed,
                                   events_maxlen=settings.redis.events_maxlen, metrics=self.metrics)
        self.sender = WebhookSender(redis_client(settings.redis.url), keys, settings.url_policy, settings.rules,
                                    dead_maxlen=settings.redis.dead_maxlen, metrics=self.metrics)
        self.errors: dict[str, str | None] = {"watcher": None, "sender": None}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(name, step), name=f"rules-{name}", daemon=True)
                         for name, step in (("watcher", self.watcher.step), ("sender", self.sender.step))]
        for t in self._threads:
            t.start()

    def _embed(self, texts: list[str]):
        if self._encoder is None:
            import torch

            from videobert.retrieval import QueryEncoder
            from videobert.text import use_minilm

            use_minilm(self.settings.minilm_dir)
            torch.set_num_threads(1)
            self._encoder = QueryEncoder(self.settings.model_dir)
        return self._encoder(texts)

    def _loop(self, name: str, step) -> None:
        from actors.keys import redis_down

        wait = 0.5
        while not self._stop.is_set():
            try:
                step(block_ms=1000)
                self.errors[name], wait = None, 0.5
            except Exception as e:  # noqa: BLE001 - the loop must outlive any failure; it says why meanwhile
                self.errors[name] = f"{type(e).__name__}: {e}"[:300]
                (log.warning if redis_down(e) else log.exception)("rules %s failed (%s); again in %.1f s", name,
                                                                  self.errors[name], wait)
                self._stop.wait(wait)
                wait = min(wait * 2, 10.0)

    def check_health(self) -> None:
        dead = [t.name for t in self._threads if not t.is_alive()]
        if dead:
            raise RuntimeError(f"rules threads died: {', '.join(dead)}")

    def stats(self) -> dict:
        return {"fired": self.watcher.fired, "errors": dict(self.errors)}

    def __del__(self):
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
