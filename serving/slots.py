"""A model's calls in flight from one worker: `per_model` slots, and a first-come queue whose waits end at the
caller's deadline.

gevent's Semaphore gives a deadline by starting a timer per wait (a Timeout object, about 4 us a wait, paid by half
the requests of a busy model: 4 % of the proxy's CPU on the identity route at c=16). Here a wait costs a Waiter and
a deque entry; one sweeper greenlet per model, alive only while someone waits, ends the waits whose deadline has
passed (within SWEEP_S). The queue length is what the proxy's own queueing metric reads.
"""
import collections
import time

import gevent
from gevent.hub import Waiter, get_hub

SWEEP_S = 0.1


class Slots:
    __slots__ = ("free", "size", "queue", "sweeper")

    def __init__(self, size):
        self.free = self.size = size
        self.queue = collections.deque()   # waiting calls: [waiter, deadline, granted (None: still waiting)]
        self.sweeper = None

    @property
    def waiting(self):
        return len(self.queue)

    @property
    def in_use(self):
        return self.size - self.free

    def take(self):
        """A free slot now, or False (no one is waiting ahead)."""
        if self.free and not self.queue:
            self.free -= 1
            return True
        return False

    def acquire(self, deadline):
        """Take a slot before `deadline` (time.monotonic()): True, or False once the deadline has passed."""
        if self.free and not self.queue:
            self.free -= 1
            return True
        if time.monotonic() >= deadline:
            return False
        entry = [Waiter(), deadline, None]
        self.queue.append(entry)
        if self.sweeper is None:
            self.sweeper = gevent.spawn(self._sweep)
        try:
            return entry[0].get()
        except BaseException:   # killed while waiting (a client that hung up, a worker that stops)
            if entry[2] is None:
                self.queue.remove(entry)
            elif entry[2]:
                self.release()   # handed a slot on the way out: pass it on
            raise

    def release(self):
        if self.queue:
            entry = self.queue.popleft()   # the slot goes straight to the first waiter
            entry[2] = True
            get_hub().loop.run_callback(entry[0].switch, True)
        else:
            self.free += 1

    def _sweep(self):
        loop = get_hub().loop
        try:
            while self.queue:
                gevent.sleep(SWEEP_S)
                now = time.monotonic()
                for entry in [e for e in self.queue if e[1] <= now]:
                    self.queue.remove(entry)
                    entry[2] = False
                    loop.run_callback(entry[0].switch, False)   # Waiter.switch runs in the hub
        finally:
            self.sweeper = None
