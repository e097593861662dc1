"""The on-demand scheduler's policy as pure functions over plain data (models, times, states): which model makes
room, whose turn it is, whether a model fits. No files, no Triton, no clock of its own: tests/test_loading_policy.py
runs it with a fake clock."""

RESIDENCY_PER_LOAD = 1.0   # a model serves at least as long as its load took before it makes room


def residency(min_residency, load_seconds, per_load=RESIDENCY_PER_LOAD):
    """A model's residency quantum: at least `min_residency`, and `per_load` times its own last load's duration, so
    that a model that is slow to load serves for longer than it took to load it before it makes room."""
    return max(min_residency, per_load * (load_seconds or 0.0))


def choose_victim(candidates, last_used, loaded_at, now, min_residency):
    """The least recently used of `candidates` whose residency quantum is over, or None. `last_used` and
    `loaded_at` map a model to a time on the clock of `now`; `min_residency` is seconds, for every model or
    {model: seconds}."""
    quantum = min_residency if isinstance(min_residency, dict) else dict.fromkeys(candidates, min_residency)
    ready = [m for m in candidates if now - loaded_at.get(m, float("-inf")) >= quantum.get(m, 0.0)]
    return min(ready, key=lambda m: (last_used.get(m, 0.0), m)) if ready else None


def queue_head(entries, states):
    """The queue: `entries` [(arrival, model)] of the requests waiting, `states` {model: (Triton's state,
    draining)}. The head is the model of the earliest request whose model still needs its turn: not already READY
    (and not draining), not being loaded. None when no model waits."""
    for _, model in sorted(entries):
        state, draining = states.get(model, ("", False))
        if (state == "READY" and not draining) or state == "LOADING":
            continue
        return model
    return None


def fits(loaded, max_loaded, used=None, expected=0, budget=None):
    """Whether one more model fits beside `loaded` others: at most `max_loaded` models (0: no limit) and, under a
    memory budget, `used` bytes held now plus `expected` for the newcomer at most `budget`."""
    if max_loaded > 0 and loaded + 1 > max_loaded:
        return False
    return budget is None or used + expected <= budget
