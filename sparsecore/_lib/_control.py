"""Control flow that maps to ``jax.lax`` under JAX and to Python elsewhere.

The solvers write their loops once against these helpers: under JAX the
data-dependent stopping and branching stay traceable under ``jax.jit`` and
batchable under ``jax.vmap``; eager namespaces run plain Python control flow,
reading the predicate on the host.  Nothing here imports a framework at
module level.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from array_api_compat import is_jax_namespace

__all__ = ["cond", "while_loop"]

State = TypeVar("State")


def while_loop(
    cond: Callable[[State], Any],
    body: Callable[[State], State],
    state: State,
    *,
    xp: Any,
    max_steps: int | None = None,
    check_every: int = 1,
) -> State:
    """Run ``body`` while ``cond`` holds, at most ``max_steps`` times.

    JAX runs ``jax.lax.while_loop`` (with a step counter in the carry when
    ``max_steps`` is given).  Eager namespaces run a Python loop that reads
    ``cond`` on the host before every ``check_every``-th step only: on a GPU
    such a read waits for every queued kernel.  With ``check_every > 1`` the
    body may therefore run on a state for which ``cond`` is false; it must
    leave such a state as it is (a solver whose finished rows do not change).
    Without ``max_steps``, ``cond`` must bound the iteration count.
    """
    if check_every < 1:
        raise ValueError(f"check_every must be a positive integer, got {check_every!r}")
    if is_jax_namespace(xp):
        import jax

        if max_steps is None:
            return jax.lax.while_loop(cond, body, state)  # type: ignore[no-any-return]
        limit = max_steps

        def counted_cond(carry: tuple[State, Any]) -> Any:
            return cond(carry[0]) & (carry[1] < limit)

        def counted_body(carry: tuple[State, Any]) -> tuple[State, Any]:
            return body(carry[0]), carry[1] + 1

        final, _ = jax.lax.while_loop(counted_cond, counted_body, (state, xp.zeros((), dtype=xp.int32)))
        return final  # type: ignore[no-any-return]
    steps = 0
    while (max_steps is None or steps < max_steps) and bool(cond(state)):
        run = check_every if max_steps is None else min(check_every, max_steps - steps)
        for _ in range(run):
            state = body(state)
        steps += run
    return state


def cond(
    predicate: Any,
    true_fn: Callable[[State], State],
    false_fn: Callable[[State], State],
    operand: State,
    *,
    xp: Any,
) -> State:
    """``true_fn(operand)`` if ``predicate`` holds, else ``false_fn(operand)``.

    JAX runs ``jax.lax.cond`` (both branches are traced, one runs); eager
    namespaces read ``predicate`` on the host and call one branch.
    """
    if is_jax_namespace(xp):
        import jax

        return jax.lax.cond(predicate, true_fn, false_fn, operand)  # type: ignore[no-any-return]
    return true_fn(operand) if bool(predicate) else false_fn(operand)
