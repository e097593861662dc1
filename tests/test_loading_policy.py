"""The on-demand scheduler's policy (serving/loading/policy.py) alone: which model is evicted, whose turn it is,
whether a model fits. Pure functions, a fake clock, no Triton."""
from serving.loading import choose_victim, fits, queue_head
from serving.loading.policy import residency


def test_the_victim_is_the_least_recently_used_past_its_residency():
    last_used = {"a": 10.0, "b": 5.0, "c": 7.0}
    loaded_at = {"a": 0.0, "b": 0.0, "c": 0.0}
    assert choose_victim(["a", "b", "c"], last_used, loaded_at, now=20.0, min_residency=1.0) == "b"


def test_a_model_within_its_residency_quantum_is_not_chosen():
    last_used = {"a": 10.0, "b": 5.0}
    loaded_at = {"a": 0.0, "b": 19.5}   # b was loaded half a second ago
    assert choose_victim(["a", "b"], last_used, loaded_at, now=20.0, min_residency=1.0) == "a"
    assert choose_victim(["b"], last_used, loaded_at, now=20.0, min_residency=1.0) is None
    assert choose_victim(["b"], last_used, loaded_at, now=20.5, min_residency=1.0) == "b"   # the quantum is over
    assert choose_victim(["b"], last_used, loaded_at, now=20.0, min_residency=0.0) == "b"


def test_a_model_slow_to_load_stays_as_long_as_its_load_took():
    """The quantum pays for the load: a model whose load took 3 s serves at least 3 s before it makes room (a fixed
    1 s quantum let a tight budget spend most of its time loading)."""
    assert residency(1.0, None) == 1.0 and residency(1.0, 0.4) == 1.0 and residency(1.0, 3.0) == 3.0
    loaded_at, last_used = {"slow": 10.0, "fast": 10.0}, {"slow": 1.0, "fast": 2.0}
    quantum = {"slow": residency(1.0, 3.0), "fast": residency(1.0, 0.2)}
    assert choose_victim(["slow", "fast"], last_used, loaded_at, now=12.0, min_residency=quantum) == "fast"
    assert choose_victim(["slow", "fast"], last_used, loaded_at, now=13.0, min_residency=quantum) == "slow"


def test_no_candidates_no_victim_and_ties_break_by_name():
    assert choose_victim([], {}, {}, now=1.0, min_residency=0.0) is None
    assert choose_victim(["y", "x"], {"x": 1.0, "y": 1.0}, {}, now=1.0, min_residency=0.0) == "x"


def test_the_head_is_the_earliest_request_whose_model_still_needs_a_turn():
    entries = [(30, "c"), (10, "a"), (20, "b")]
    assert queue_head(entries, {}) == "a"
    assert queue_head(entries, {"a": ("READY", False)}) == "b"    # a has had its turn; its waiters are leaving
    assert queue_head(entries, {"a": ("LOADING", False)}) == "b"  # a's turn is under way
    assert queue_head(entries, {"a": ("READY", True)}) == "a"     # a is draining: it needs a turn again
    assert queue_head(entries, {"a": ("UNLOADING", False)}) == "a"
    assert queue_head([], {}) is None


def test_two_workers_waiting_for_one_model_keep_its_earliest_place():
    entries = [(15, "b"), (12, "a"), (10, "b")]   # b from two workers, the first at 10
    assert queue_head(entries, {}) == "b"


def test_a_model_fits_within_the_count_and_the_memory_budget():
    assert fits(0, max_loaded=1) and not fits(1, max_loaded=1)
    assert fits(50, max_loaded=0)                                   # no count limit
    assert fits(1, 0, used=600, expected=400, budget=1000)          # exactly at the budget
    assert not fits(1, 0, used=601, expected=400, budget=1000)
    assert not fits(2, max_loaded=2, used=0, expected=0, budget=1000)   # both limits hold
