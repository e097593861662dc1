"""On-demand model loading (MODEL_LOADING=on-demand): Triton runs with explicit model control, a model loads on its
first request, and under a budget (MAX_LOADED_MODELS, MODEL_MEMORY_BUDGET) loaded models make room in turn.
MODELS_PINNED load at start-up and never unload.

Routes are bound from each model's config.pbtxt (serving/repository.py), so that nothing needs to be loaded to start.

Scheduling, when a working set is larger than the budget (docs/on-demand.md):
- **waiters in turn**: a model that needs room joins a queue, in the order its first request arrived, shared by the
  workers; only the model at its head may make room and load;
- **the victim drains**: to make room, the least recently used unpinned model is marked draining. New requests
  for it wait like those of any model that is not loaded (it joins the queue's tail); its requests in flight
  finish; then it is unloaded and the head loads. Nothing is unloaded under a request;
- **loads side by side**: the head of the queue makes room and marks its load under repository.lock, then loads
  outside it, so that the next waiting model may take the other free place at once (under a memory budget, loads
  take turns: each is measured alone);
- **a residency quantum**: a model loaded less than MODEL_MIN_RESIDENCY seconds ago, or less than its own last
  load took, is not chosen, so a tight budget takes turns instead of loading once per request;
- **bounded waits**: a request's wait counts against its deadline; one whose turn does not come in time gets 503
  with Retry-After.

The package, by what each module knows:
- policy.py: the decisions (the victim, the queue's head, whether a model fits) as pure functions;
- files.py: the state the gunicorn workers share, as files in LOADING_DIR (locks, marks, the queue);
- control.py: Triton's load, unload, index and readiness calls;
- memory.py: what the loaded models hold (MODEL_MEMORY_BUDGET);
- swaps.py: a load or an unload carried out and recorded (marks, metrics, log lines);
- loader.py: the Loader, which carries out the policy's decisions with the other three: enter(model) before a
  request's call, leave(model) after it.
"""
from .loader import Loader
from .memory import Memory
from .policy import choose_victim, fits, queue_head

__all__ = ["Loader", "Memory", "choose_victim", "fits", "queue_head"]
