"""Request batching for the TF Serving stand-in, after TensorFlow's BasicBatchScheduler.

Predict calls with the same servable, signature, outputs and per-row input shapes and dtypes share a queue.
A queue's open batch takes tasks until the next would exceed max_batch_size; a batch is processed by one
of num_batch_threads threads once it is full, closed, or batch_timeout_micros old. More than
max_enqueued_batches waiting batches in a queue reject the task with UNAVAILABLE. A processed batch is
the tasks' inputs concatenated along dimension 0 (padded with copies of the first row up to the next
allowed_batch_sizes entry), run once, and its outputs split back by task size.

Not implemented: padding variable-length inputs (tasks whose shapes differ beyond dimension 0 go to
different queues instead) and large batch splitting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from .config import Batching
from .servable import Arrays, Runner, ServingError


@dataclass
class _Task:
    inputs: Arrays
    size: int
    done: threading.Event = field(default_factory=threading.Event)
    outputs: Arrays | None = None
    error: ServingError | None = None


@dataclass
class _Batch:
    run: Runner
    created: float = field(default_factory=time.monotonic)
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0


class Batcher:
    def __init__(self, params: Batching) -> None:
        self.params = params
        self._timeout_s = params.batch_timeout_micros / 1e6
        self._queues: dict[Hashable, list[_Batch]] = {}
        self._cv = threading.Condition()
        self._stopped = False
        self.batches = 0  # processed batches and the sum of their (padded) sizes, for the metrics
        self.batched_size = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"{params.thread_pool_name}-{i}", daemon=True)
            for i in range(params.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, group: Hashable, run: Runner, inputs: Arrays) -> Arrays:
        """Run `inputs` as part of a batch of `group`; blocks until the batch has run."""
        sizes = {name: (value.shape[0] if value.ndim else None) for name, value in inputs.items()}
        if None in sizes.values():
            raise ServingError(
                "INVALID_ARGUMENT", "Batching session Run() input tensors must have at least one dimension"
            )
        if len(set(sizes.values())) > 1:
            raise ServingError(
                "INVALID_ARGUMENT", f"Batching Run() input tensors must have equal 0th-dimension size: {sizes}"
            )
        size = next(iter(sizes.values()), 0) or 0
        if size > self.params.max_batch_size:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Task size {size} is larger than maximum input batch size {self.params.max_batch_size}",
            )
        shapes = tuple(sorted((name, value.dtype.str, value.shape[1:]) for name, value in inputs.items()))
        key = (group, shapes)
        task = _Task(inputs, size)
        with self._cv:
            if self._stopped:
                raise ServingError("UNAVAILABLE", "the batch scheduler is shutting down")
            queue = self._queues.setdefault(key, [])
            if not queue or queue[-1].size + size > self.params.max_batch_size:
                if len(queue) >= self.params.max_enqueued_batches:
                    raise ServingError(
                        "UNAVAILABLE", "The batch scheduling queue to which this task was submitted is full"
                    )
                queue.append(_Batch(run))
            queue[-1].tasks.append(task)
            queue[-1].size += size
            self._cv.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        assert task.outputs is not None
        return task.outputs

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)

    def _next_batch(self) -> _Batch | None:
        """The oldest processable batch, waiting until one is; None once stopped and drained."""
        with self._cv:
            while True:
                now, wake, chosen = time.monotonic(), None, None
                for key, queue in self._queues.items():
                    if not queue:
                        continue
                    head = queue[0]
                    due = head.created + self._timeout_s
                    ready = len(queue) > 1 or head.size >= self.params.max_batch_size or now >= due or self._stopped
                    if ready and (chosen is None or head.created < self._queues[chosen][0].created):
                        chosen = key
                    elif not ready:
                        wake = due if wake is None else min(wake, due)
                if chosen is not None:
                    return self._queues[chosen].pop(0)
                if self._stopped:
                    return None
                self._cv.wait(None if wake is None else max(wake - now, 0.0))

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._process(batch)

    def _process(self, batch: _Batch) -> None:
        tasks = batch.tasks
        try:
            names = list(tasks[0].inputs)
            merged = {name: np.concatenate([t.inputs[name] for t in tasks]) for name in names}
            target = next((s for s in self.params.allowed_batch_sizes if s >= batch.size), batch.size)
            if target > batch.size:
                merged = {
                    name: np.concatenate([value, np.repeat(value[:1], target - batch.size, axis=0)])
                    for name, value in merged.items()
                }
            with self._cv:
                self.batches += 1
                self.batched_size += target
            outputs = batch.run(merged)
            for name, value in outputs.items():
                if value.ndim == 0 or value.shape[0] != target:
                    raise ServingError(
                        "FAILED_PRECONDITION",
                        f"Batched output tensor '{name}' has 0th dimension {value.shape[0] if value.ndim else 'none'}, "
                        f"which does not equal the sum of the 0th dimension sizes of the input tensors ({target})",
                    )
            start = 0
            for task in tasks:
                task.outputs = {name: value[start : start + task.size] for name, value in outputs.items()}
                start += task.size
        except ServingError as exc:
            for task in tasks:
                task.error = exc
        except Exception as exc:  # never leave a caller waiting
            error = ServingError("INTERNAL", f"{type(exc).__name__}: {exc}")
            for task in tasks:
                task.error = error
        finally:
            for task in tasks:
                task.done.set()
