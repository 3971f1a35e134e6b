r"""Math-verify rewards, scored in worker processes under a hard per-answer time limit.

math-verify bounds its own work with SIGALRM, which only works in a process's main thread and
cannot interrupt long C-level arithmetic: ``\boxed{5^{5^{5^{5}}}}`` hangs inside a big-integer
power where no Python signal handler ever runs. So math-verify's own timeouts are switched off
and the bound is enforced from outside: each answer is scored in the main thread of a worker
process, the parent tracks when each answer started, and a worker that passes the limit is
SIGKILLed and a fresh worker takes over the rest. The answer that overran is tried once more on
a fresh worker (a busy machine can stall a correct answer past the limit); only if it overruns
again does it score 0, counted as timed out. With the default ``forkserver`` start method the
fork server has math-verify already imported, so a replacement costs milliseconds rather than a
fresh interpreter.

A worker's start-up is not an answer's time: a new worker first scores a warm-up answer (math-verify
builds its parsers on first use, about a second on a busy machine) and only then reports ready;
an answer's clock starts when it is sent to a ready worker.

Reward values: 1.0 correct; 0.0 wrong, no answer found, timed out or crashed. ``score_answer``
returns None only when the gold itself has no parseable answer (nothing to score against); the
pool reports such items as 0.0 with ``unscorable`` set, so a trainer can zero their advantage.

Speed: answers go to workers in chunks (one round trip per chunk, not per answer), each worker
reports every result as it finishes (that is what keeps per-answer deadlines exact), and the parent
memoises (response, gold) pairs across calls, because a small policy repeats its answers a lot.
Crashes are memoised too, timeouts are not: a timeout says how busy the machine was as much as
what the answer is, and a memoised one would score a correct answer 0 for the rest of the run.
The price is that a collapsed policy repeating one pathological answer pays twice the limit for
it on every step it appears.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import math
import multiprocessing as mp
import os
import pickle
import signal
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import NamedTuple

from math_verify import parse, verify

from workbench.names import REWARD_CRASH_FRAC, REWARD_TIMEOUT_FRAC

__all__ = ["RewardPool", "RewardResult", "score_answer"]

Scorer = Callable[[str, str], "float | None"]

_START_METHODS = ("forkserver", "spawn", "fork")
_READY = "ready"
_STARTUP_TIMEOUT_S = 60.0
_CLOSE_GRACE_S = 1.0
# Answers that touch math-verify's LaTeX and number parsers and its sympy comparison (both score 1).
_WARM_UP = (("\\boxed{15}", "15"), ("\\boxed{0.5}", "\\frac{1}{2}"))
_log = logging.getLogger(__name__)


def score_answer(response: str, gold: str, *, require_boxed: bool = False) -> float | None:
    r"""Score one response against its gold answer with math-verify (gold parsed first).

    Returns 1.0 if the answer math-verify extracts from ``response`` equals ``gold``, 0.0 if it
    differs or ``response`` contains no answer at all (so a policy cannot dodge a wrong answer by
    giving none), and None when ``gold`` has no parseable answer. Runs in-process with no time
    bound: score untrusted text through ``RewardPool``.

    math-verify falls back to the last expression when there is no ``\boxed{}``, so a scratchpad
    cut off before its answer line can still score 1. ``require_boxed=True`` scores such a
    response 0.0 instead; for the pool, pass ``functools.partial(score_answer, require_boxed=True)``.

    >>> score_answer("3+7=10;10+5=15;\\boxed{15}", "15")
    1.0
    >>> score_answer("\\boxed{1/2}", "0.5"), score_answer("\\boxed{0.5}", "\\frac{1}{2}")
    (1.0, 1.0)
    >>> score_answer("3+7=10;10+5=15;\\boxed{16}", "15"), score_answer("no idea", "15")
    (0.0, 0.0)
    >>> score_answer("3+7=10;10+5=15;", "15"), score_answer("3+7=10;10+5=15;", "15", require_boxed=True)
    (1.0, 0.0)
    >>> print(score_answer("\\boxed{15}", ""))
    None
    """
    gold_parsed = _parse_gold(gold)
    if not gold_parsed:
        return None
    if require_boxed and "\\boxed" not in response:
        return 0.0
    answer = parse(response, parsing_timeout=None)
    if not answer:
        return 0.0
    return 1.0 if verify(list(gold_parsed), answer, timeout_seconds=None) else 0.0


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple:
    # A group's samples share one gold, and its parse is half the cost of scoring a short answer.
    return tuple(parse(gold, parsing_timeout=None))


@dataclass(frozen=True)
class RewardResult:
    """Per-answer outcome of one ``RewardPool.score`` call, in input order.

    rewards: reward per answer; 0.0 wherever one of the flags below is set.
    timed_out: the answer ran past the pool's limit and its worker was killed.
    crashed: the worker died, or the scorer raised, while scoring the answer.
    unscorable: the gold had no parseable answer (None from the scorer); all False if omitted.
    """

    rewards: list[float]
    timed_out: list[bool]
    crashed: list[bool]
    unscorable: list[bool] | None = None

    def __post_init__(self) -> None:
        n = len(self.rewards)
        if self.unscorable is None:
            object.__setattr__(self, "unscorable", [False] * n)
        lengths = {len(self.timed_out), len(self.crashed), len(self.unscorable)}
        if lengths != {n}:
            raise ValueError(
                f"RewardResult lists must have equal lengths; got rewards={n}, "
                f"timed_out={len(self.timed_out)}, crashed={len(self.crashed)}, "
                f"unscorable={len(self.unscorable)}"
            )

    def metrics(self) -> dict[str, float]:
        """Shares of answers that timed out and that crashed (0.0 for an empty batch)."""
        n = max(len(self.rewards), 1)
        return {
            REWARD_TIMEOUT_FRAC: sum(self.timed_out) / n,
            REWARD_CRASH_FRAC: sum(self.crashed) / n,
        }


class _Outcome(NamedTuple):
    reward: float
    timed_out: bool = False
    crashed: bool = False
    unscorable: bool = False


_TIMED_OUT = _Outcome(0.0, timed_out=True)
_CRASHED = _Outcome(0.0, crashed=True)
_UNSCORABLE = _Outcome(0.0, unscorable=True)


def _die_with_parent() -> None:
    # A worker stuck in C arithmetic holds the GIL, so no thread or signal handler of its own can
    # notice that the trainer died; it would burn a core forever. Linux can SIGKILL it when its
    # parent dies instead. Under forkserver that parent is the fork server, which exits with the
    # trainer only once no child holds the server's "alive" pipe, so drop this worker's copy
    # (a worker never starts processes of its own). Both steps are best effort.
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    alive_fd = getattr(server, "_forkserver_alive_fd", None)
    if alive_fd is not None:
        os.close(alive_fd)
        server._forkserver_alive_fd = None
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _worker_main(conn: Connection, scorer: Scorer) -> None:
    """Score chunks of (response, gold) sent by the parent, one reply per answer, until None."""
    _die_with_parent()
    # Ctrl-C reaches the whole process group; the trainer decides when workers stop, not the tty.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # With its timeouts off math-verify warns once that the caller must bound it; this pool does.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # Pay math-verify's first-use costs before any answer's clock starts. Through score_answer,
    # not the configured scorer: a scorer may count or cache its calls.
    try:
        for response, gold in _WARM_UP:
            score_answer(response, gold)
    except Exception:  # noqa: BLE001 - a failed warm-up leaves the costs to the first answer, nothing worse
        pass
    conn.send(_READY)
    while True:
        try:
            chunk = conn.recv()
        except EOFError:
            return
        if chunk is None:
            return
        for response, gold in chunk:
            try:
                value = scorer(response, gold)
                reply = ("ok", None if value is None else float(value))
            except Exception as exc:  # a scorer bug costs this answer, not the whole chunk
                reply = ("error", f"{type(exc).__name__}: {exc}"[:500])
            conn.send(reply)


class _Worker:
    """Parent-side handle: the process, its pipe, and the answers it has been sent."""

    def __init__(self, ctx: mp.context.BaseContext, scorer: Scorer) -> None:
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_worker_main, args=(child_conn, scorer), name="reward-worker", daemon=True
        )
        self.process.start()
        # Only the child may hold its end, so that the worker's death reads as EOF here.
        child_conn.close()
        self.spawned = time.monotonic()
        self.ready = False
        self.items: deque[int] = deque()  # indices sent and not yet answered; head is running
        self.started = 0.0  # when the head item started, as seen by the parent

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()

    def ask_to_stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass


def _memo_key(response: str, gold: str) -> bytes:
    # A digest keeps the memo small when responses are thousands of tokens long.
    h = hashlib.blake2b(digest_size=16)
    for part in (gold, response):
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


class RewardPool:
    """Worker processes that score answers with a hard per-answer wall-clock limit.

    workers: number of worker processes, started once here and replaced when one is killed.
    timeout_s: per-answer limit; an answer still running after it scores 0 and is counted.
    start_method: "forkserver" (default where available: fast replacements, safe with threads),
        "spawn", or "fork" (only from a process without threads).
    scorer: (response, gold) -> float | None, run in the workers; a top-level function (or a
        functools.partial of one) that a fresh process can import by name. Default ``score_answer``.
    memo_size: how many (response, gold) outcomes to remember across calls; 0 turns it off.

    Workers import the main module afresh (spawn semantics), so a script that creates a pool
    needs the usual ``if __name__ == "__main__":`` guard. Use as a context manager or call
    ``close()``. One ``score`` call at a time (not thread-safe); an exception or interrupt inside
    it closes the pool, since its workers may then be mid-answer.
    """

    def __init__(
        self,
        workers: int = 1,
        timeout_s: float = 2.0,
        start_method: str | None = None,
        scorer: Scorer = score_answer,
        memo_size: int = 100_000,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
        available = [m for m in _START_METHODS if m in mp.get_all_start_methods()]
        start_method = start_method or available[0]
        if start_method not in available:
            raise ValueError(f"start_method must be one of {available}, got {start_method!r}")
        if not callable(scorer):
            raise ValueError(f"scorer must be a callable (response, gold) -> float | None, got {scorer!r}")
        try:
            pickle.dumps(scorer)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise ValueError(
                f"scorer must be a top-level function that workers can import by name, got {scorer!r}"
            ) from exc
        if isinstance(memo_size, bool) or not isinstance(memo_size, int) or memo_size < 0:
            raise ValueError(f"memo_size must be an integer >= 0, got {memo_size!r}")

        self.timeout_s = float(timeout_s)
        self._ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            # Only takes effect if this process has not started its fork server yet.
            self._ctx.set_forkserver_preload([__name__])
        self._scorer = scorer
        self._memo: OrderedDict[bytes, _Outcome] = OrderedDict()
        self._memo_size = memo_size
        self._closed = False
        self._workers = [_Worker(self._ctx, scorer) for _ in range(workers)]
        try:
            self._await_ready()
        except BaseException:
            self._shutdown(grace_s=0.0)
            raise

    @property
    def pids(self) -> list[int]:
        """Process ids of the current workers (they change when a worker is replaced)."""
        return [w.process.pid for w in self._workers]

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop all workers and wait for them to exit; safe to call twice."""
        self._shutdown(_CLOSE_GRACE_S)

    def _shutdown(self, grace_s: float) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            w.ask_to_stop()
        deadline = time.monotonic() + grace_s
        for w in self._workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            w.kill()
        self._workers = []

    def score(self, responses: Sequence[str], golds: Sequence[str]) -> RewardResult:
        """Score ``responses[i]`` against ``golds[i]``; returns outcomes in input order.

        Returns within about ``timeout_s`` per answer that hangs, divided over the workers.
        """
        if self._closed:
            raise RuntimeError("RewardPool is closed; create a new one")
        if len(responses) != len(golds):
            raise ValueError(
                f"responses and golds must have equal lengths, got {len(responses)} and {len(golds)}"
            )
        for name, texts in (("responses", responses), ("golds", golds)):
            bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
            if bad is not None:
                raise ValueError(f"{name}[{bad}] must be a str, got {type(texts[bad]).__name__}")

        keys = [_memo_key(r, g) for r, g in zip(responses, golds)]
        todo: dict[bytes, tuple[str, str]] = {}
        for key, response, gold in zip(keys, responses, golds):
            if key not in self._memo and key not in todo:
                todo[key] = (response, gold)
        try:
            fresh = dict(zip(todo, self._score_unique(list(todo.values()))))
        except BaseException:
            self._shutdown(grace_s=0.0)  # workers may be mid-answer; waiting would not help
            raise

        outcomes = []
        for key in keys:
            outcome = fresh.get(key)
            if outcome is None:
                outcome = self._memo[key]
                self._memo.move_to_end(key)
            outcomes.append(outcome)
        self._remember(fresh)
        return RewardResult(
            rewards=[o.reward for o in outcomes],
            timed_out=[o.timed_out for o in outcomes],
            crashed=[o.crashed for o in outcomes],
            unscorable=[o.unscorable for o in outcomes],
        )

    def _remember(self, fresh: dict[bytes, _Outcome]) -> None:
        if self._memo_size == 0:
            return
        self._memo.update((k, o) for k, o in fresh.items() if not o.timed_out)
        while len(self._memo) > self._memo_size:
            self._memo.popitem(last=False)

    def _score_unique(self, items: list[tuple[str, str]]) -> list[_Outcome]:
        """Run every item through the workers, killing and replacing any that overrun."""
        outcomes: list[_Outcome | None] = [None] * len(items)
        # A few chunks per worker: few round trips, yet a worker stuck on a slow answer does not
        # hold back most of the batch behind it.
        size = max(1, math.ceil(len(items) / (4 * len(self._workers))))
        queue = deque(list(range(i, min(i + size, len(items)))) for i in range(0, len(items), size))
        retried: set[int] = set()  # answers that overran once and went back to a fresh worker

        while queue or any(w.items for w in self._workers):
            now = time.monotonic()
            for w in self._workers:
                if w.ready and not w.items and queue:
                    chunk = queue.popleft()
                    try:
                        w.conn.send([items[i] for i in chunk])
                    except OSError:  # died while idle: nothing of the chunk ran, so requeue it
                        queue.appendleft(chunk)
                        continue
                    w.items.extend(chunk)
                    w.started = now
            waiting = [w for w in self._workers if w.items or not w.ready]
            deadlines = [w.started + self.timeout_s for w in waiting if w.items]
            deadlines += [w.spawned + _STARTUP_TIMEOUT_S for w in waiting if not w.ready]
            wait(
                [w.conn for w in waiting] + [w.process.sentinel for w in waiting],
                timeout=max(0.0, min(deadlines, default=now) - now),
            )
            for k, w in enumerate(self._workers):
                retry: list[int] = []
                if self._sweep(w, outcomes, time.monotonic(), retried, retry):
                    if w.items:
                        queue.appendleft(list(w.items))
                    if retry:  # alone in its chunk, so that its retry is timed on its own
                        queue.appendleft(retry)
                    self._workers[k] = _Worker(self._ctx, self._scorer)
        return outcomes  # type: ignore[return-value]  # every slot is filled by now

    def _sweep(self, w: _Worker, outcomes: list[_Outcome | None], now: float, retried: set[int] | None = None,
               retry: list[int] | None = None) -> bool:
        """Collect finished answers; kill an overrunning worker. True if ``w`` must be replaced.

        An answer overrunning for the first time goes into ``retry`` (and ``retried``) instead of
        scoring 0; one that overran before is timed out.
        """
        # Checked before reading: a dead worker's last replies are then already in the pipe.
        dead = not w.process.is_alive()
        while w.conn.poll():
            try:
                message = w.conn.recv()
            except (EOFError, OSError):
                break
            if not w.ready:
                w.ready = message == _READY
                continue
            status, value = message
            if status != "ok":
                _log.warning("reward scorer raised, answer scored 0: %s", value)
            outcomes[w.items.popleft()] = (
                _CRASHED if status != "ok" else _UNSCORABLE if value is None else _Outcome(value)
            )
            w.started = now
        if not w.ready and (dead or now >= w.spawned + _STARTUP_TIMEOUT_S):
            w.kill()
            raise RuntimeError(
                f"reward worker did not start (exit code {w.process.exitcode}); "
                "the scorer must be a top-level function importable in a fresh process, and a "
                "script that creates a pool needs an `if __name__ == \"__main__\":` guard"
            )
        if w.items and (dead or now >= w.started + self.timeout_s):
            item = w.items.popleft()
            if dead:
                outcomes[item] = _CRASHED
            elif retried is not None and retry is not None and item not in retried:
                retried.add(item)
                retry.append(item)
            else:
                outcomes[item] = _TIMED_OUT
            w.kill()
            return True
        if dead:
            w.kill()
            return True
        return False

    def _await_ready(self) -> None:
        while not all(w.ready for w in self._workers):
            waiting = [w for w in self._workers if not w.ready]
            wait([w.conn for w in waiting] + [w.process.sentinel for w in waiting], timeout=1.0)
            for w in waiting:
                self._sweep(w, [], time.monotonic())
