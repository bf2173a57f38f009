"""Server-side batching: concurrent calls merged into one model call."""

import collections
import threading
import time

import grpc
import numpy as np

from serving.server.status import ServingError


class _Task:
    __slots__ = ("inputs", "size", "enqueued", "done", "outputs", "error")

    def __init__(self, inputs, size, enqueued):
        self.inputs = inputs
        self.size = size
        self.enqueued = enqueued
        self.done = threading.Event()
        self.outputs = None
        self.error = None


class _Queue:
    __slots__ = ("function", "tasks", "size")

    def __init__(self, function):
        self.function = function
        self.tasks = collections.deque()
        self.size = 0


class Batcher:
    """Merges concurrent calls of the same function into batched calls.

    `run(key, function, inputs, batch_size)` blocks until the outputs for
    `inputs` are ready. Calls with the same `key` (same function and the same
    per-example input shapes and dtypes) queue together; `num_batch_threads`
    workers take up to `max_batch_size` examples at a time from a queue once it
    holds a full batch or its oldest call has waited `batch_timeout_micros`.

    Args:
        params: `BatchingParameters`.
        clock: seconds, monotonic; how old a queued call is. Tests pass a
            clock they advance by hand, so that batches form the same way on
            a loaded machine as on an idle one.
    """

    def __init__(self, params, clock=time.monotonic):
        self.params = params
        self._clock = clock
        self._cv = threading.Condition()
        self._queues = collections.OrderedDict()
        self._stopped = False
        self._lock_stats = threading.Lock()
        self.num_batches = 0
        self.num_tasks = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
            for i in range(params.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def stats(self):
        with self._lock_stats:
            return {"batches": self.num_batches, "tasks": self.num_tasks}

    def pending(self):
        """Calls that are queued and not yet taken into a batch."""
        with self._cv:
            return sum(len(queue.tasks) for queue in self._queues.values())

    def run(self, key, function, inputs, batch_size):
        if batch_size < 1 or batch_size > self.params.max_batch_size:
            self._count(1, 1)
            return function(inputs)
        task = _Task(inputs, batch_size, self._clock())
        with self._cv:
            if self._stopped:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "Server is shutting down")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(function)
            capacity = self.params.max_enqueued_batches * self.params.max_batch_size
            if queue.size + batch_size > capacity:
                raise ServingError(
                    grpc.StatusCode.UNAVAILABLE,
                    "The batch scheduling queue to which this task was submitted is full",
                )
            queue.tasks.append(task)
            queue.size += batch_size
            self._cv.notify()
        task.done.wait()
        if task.error is not None:
            # Raising `task.error` from here would add this frame (which holds
            # `task`) to its traceback: a task <-> error reference cycle that
            # keeps the request's inputs alive until the cyclic GC runs.
            error, task.error = task.error, None
            try:
                raise error
            finally:
                error = None
        return task.outputs

    def _count(self, batches, tasks):
        with self._lock_stats:
            self.num_batches += batches
            self.num_tasks += tasks

    def _take_batch(self):
        """Called with the lock held: (function, tasks) or (None, wait seconds)."""
        timeout = self.params.batch_timeout_micros / 1e6
        now = self._clock()
        wait = None
        for key, queue in self._queues.items():
            if not queue.tasks:
                continue
            age = now - queue.tasks[0].enqueued
            if queue.size >= self.params.max_batch_size or age >= timeout:
                tasks, size = [], 0
                while queue.tasks and size + queue.tasks[0].size <= self.params.max_batch_size:
                    task = queue.tasks.popleft()
                    tasks.append(task)
                    size += task.size
                queue.size -= size
                function = queue.function
                if not queue.tasks:
                    del self._queues[key]
                else:
                    # Round robin: serve the other queues first next time.
                    self._queues.move_to_end(key)
                return function, tasks
            remaining = timeout - age
            wait = remaining if wait is None else min(wait, remaining)
        return None, wait

    def _work(self):
        while True:
            with self._cv:
                while True:
                    if self._stopped and not self._queues:
                        return
                    function, tasks = self._take_batch()
                    if function is not None:
                        break
                    self._cv.wait(timeout=tasks)
                if self._queues:
                    self._cv.notify()
            self._execute(function, tasks)

    def _execute(self, function, tasks, count=True):
        if count:
            self._count(1, len(tasks))
        if len(tasks) == 1:
            [task] = tasks
            try:
                task.outputs = function(task.inputs)
            except Exception as e:  # noqa: BLE001 - handed to the waiting request.
                # Without its traceback (this frame holds `task`): no cycle.
                task.error = e.with_traceback(None)
            task.done.set()
            return
        failed = False
        try:
            merged = {
                k: np.concatenate([t.inputs[k] for t in tasks]) for k in tasks[0].inputs
            }
            outputs = function(merged)
            total = sum(t.size for t in tasks)
            if any(v.ndim == 0 or v.shape[0] != total for v in outputs.values()):
                raise ValueError("an output has no batch dimension")
        except Exception:  # noqa: BLE001 - isolate the failing request(s).
            failed = True
        if failed:
            # Bisect, so that k bad requests cost O(k log n) extra calls and
            # every other request still gets its answer. Outside the `except`:
            # the halves' errors would otherwise chain this one (and the merged
            # inputs) as their __context__.
            merged = outputs = None
            middle = len(tasks) // 2
            self._execute(function, tasks[:middle], count=False)
            self._execute(function, tasks[middle:], count=False)
            return
        offset = 0
        for task in tasks:
            task.outputs = {k: v[offset : offset + task.size] for k, v in outputs.items()}
            offset += task.size
            task.done.set()

    def stop(self):
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
