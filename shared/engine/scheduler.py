"""Continuous batching: which requests run in the next step, and where their KV cache lives.

Every step runs, in one forward pass, one token for every decoding request plus prompt chunks of
requests being prefilled, within ``max_tokens_per_step`` tokens:
1. all decoding requests (never preempted: a running reply never stalls for a new prompt beyond
   one step's budget);
2. with the budget left, the next chunk of each request already prefilling (oldest first), then
   new requests from the FIFO queue while a slot is free; each chunk is at most ``prefill_chunk``.
A request whose last prompt chunk runs this step gets its first token sampled from that step's
logits (a request scoring its prompt, ``prompt_logprobs``, gets logits for every prompt row; the
plan says which rows are sampled) and decodes from the next step on; one that finishes leaves between steps. So requests join
and leave the running batch every step, and a long prompt is spread over several steps.

Slots: a resident request owns one KV-cache slot. Invariant: the decoding requests are exactly
slots ``0..n_decode-1``, so the decode attention reads the cache as a view (see
``shared.engine.cache``). It costs one cache copy per event: a request that finishes hands its
slot to the last decoding request (``move``); one that starts decoding swaps into slot
``n_decode`` (``swap``) with whatever sits there (a free slot or a request still prefilling).

This module neither runs the model nor samples (``shared.engine.engine``).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from shared.engine.cache import KVCache, StepBatch
from shared.engine.request import Request, Status


@dataclass
class Plan:
    """One step: the batch to run and who is in it. ``sampled`` is in ``batch.logit_rows`` order."""

    batch: StepBatch
    decode: list[Request]
    chunks: list[tuple[Request, int, int]]  # (request, start, length)
    sampled: list[Request]
    # Requests scoring their prompt: (request, chunk start, chunk length, index of the chunk's first logit row).
    scored: list[tuple[Request, int, int, int]] = field(default_factory=list)
    sample_rows: list[int] | None = None  # logit rows of ``sampled`` when they are not all the rows, in order


class Scheduler:
    """Queue, slots and step planning for one engine (see the module docstring)."""

    def __init__(self, cache: KVCache, max_tokens_per_step: int, prefill_chunk: int | None):
        self.cache = cache
        self.budget = max_tokens_per_step
        self.prefill_chunk = prefill_chunk or max_tokens_per_step
        self.waiting: deque[Request] = deque()
        self.prefilling: list[Request] = []  # admission order
        self.slots: list[Request | None] = [None] * cache.slots
        self.n_decode = 0

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    @property
    def has_work(self) -> bool:
        return bool(self.n_decode or self.prefilling or self.waiting)

    @property
    def num_running(self) -> int:
        return self.n_decode + len(self.prefilling)

    # ------------------------------------------------------------------ planning

    def schedule(self, dtype: torch.dtype, device: torch.device) -> Plan | None:
        """The next step's plan, or None when there is nothing to run."""
        decode = self.slots[:self.n_decode]
        budget = self.budget - len(decode)
        chunks: list[tuple[Request, int, int]] = []
        for req in self.prefilling:
            if budget <= 0:
                break
            take = min(len(req.prompt) - req.num_cached, budget, self.prefill_chunk)
            chunks.append((req, req.num_cached, take))
            budget -= take
        while budget > 0 and self.waiting and (slot := self._free_slot()) is not None:
            req = self.waiting.popleft()
            req.status, req.slot = Status.PREFILL, slot
            self.slots[slot] = req
            self.prefilling.append(req)
            take = min(len(req.prompt), budget, self.prefill_chunk)
            chunks.append((req, 0, take))
            budget -= take
        if not decode and not chunks:
            return None
        rows = list(range(len(decode)))
        sampled = list(decode)
        sample_rows = list(range(len(decode)))
        scored: list[tuple[Request, int, int, int]] = []
        offset = len(decode)
        for req, start, take in chunks:
            if req.params.prompt_logprobs is not None:  # scoring: logits at every prompt position
                scored.append((req, start, take, len(rows)))
                rows.extend(range(offset, offset + take))
            offset += take
            if start + take == len(req.prompt):  # the prompt is complete: its last row gives the first token
                if req.params.prompt_logprobs is None:
                    rows.append(offset - 1)
                sample_rows.append(len(rows) - 1)
                sampled.append(req)
        batch = StepBatch.build([(r.output_ids[-1], r.num_cached) for r in decode],
                                [(r.slot, start, r.prompt[start:start + take]) for r, start, take in chunks],
                                rows, dtype=dtype, device=device)
        return Plan(batch, decode, chunks, sampled, scored, None if not scored else sample_rows)

    def _free_slot(self) -> int | None:
        for slot in range(self.n_decode, len(self.slots)):  # slots below n_decode are all decoding
            if self.slots[slot] is None:
                return slot
        return None

    # ------------------------------------------------------------------ after a step

    def advance(self, plan: Plan) -> None:
        """Count the tokens the step wrote into the cache (before sampled tokens are accepted)."""
        for req in plan.decode:
            req.num_cached += 1
        for req, _, take in plan.chunks:
            req.num_cached += take

    def settle(self, plan: Plan) -> None:
        """Release the slots of finished requests and move completed prompts into the decode batch."""
        finished = [r for r in plan.sampled if r.finished]
        for req in sorted(finished, key=lambda r: -r.slot):  # highest slot first: fewest cache moves
            self.release(req)
        for req in plan.sampled:
            if req.status is Status.PREFILL and req.num_cached == len(req.prompt):
                self._join_decode(req)

    def release(self, req: Request) -> None:
        """Take ``req`` out of the queue or its slot (finished or aborted), keeping the slot invariant."""
        if req.slot is None:
            if req in self.waiting:
                self.waiting.remove(req)
            return
        slot, req.slot = req.slot, None
        if slot >= self.n_decode:  # was prefilling
            self.prefilling.remove(req)
            self.slots[slot] = None
            return
        last = self.n_decode - 1
        if slot != last:
            mover = self.slots[last]
            self.cache.move(last, slot, mover.num_cached)
            self.slots[slot], mover.slot = mover, slot
        self.slots[last] = None
        self.n_decode -= 1

    def _join_decode(self, req: Request) -> None:
        target = self.n_decode
        if req.slot != target:
            other = self.slots[target]
            self.cache.swap(req.slot, target, req.num_cached, other.num_cached if other else 0)
            self.slots[req.slot], self.slots[target] = other, req
            if other is not None:
                other.slot = req.slot
            req.slot = target
        self.prefilling.remove(req)
        req.status = Status.DECODE
        self.n_decode += 1
