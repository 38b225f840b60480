"""Token budgets: how many new tokens each input may generate, and which inputs share a batch.

Every input gets its own budget, a function of that input alone, so a prompt never depends on
what it happens to be batched with::

    budget = min(window - input tokens, 3 x asked words + 8 + the prompt's length markers)

(<|end|> included). An input whose budget is below ``2 x asked words + markers + 1`` does not
fit: ``check_fit`` raises :class:`~rewriters.errors.QueryTooLongError` naming the longest query
that would.

Engines differ in what one forward batch may mix (``BUDGET_RULES``):

- ``per_row``: any budgets; each row stops at its own (ONNX Runtime, right-padded rows with
  their own positions and cache length).
- ``window``: rows stop at their own budget, but every row runs until the batch's largest
  budget is spent, so that largest budget must fit the window of every row (PyTorch: left
  padding, positions per row).
- ``equal``: one budget per batch, so rows share a batch only when their budgets are equal
  (CTranslate2, whose ``max_length`` is one number).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..commands import Command
from ..errors import QueryTooLongError

__all__ = ["BUDGET_RULES", "Plan", "prompt_budget", "least_budget", "item_budget", "check_fit",
           "group_items"]

BUDGET_RULES = ("per_row", "window", "equal")


def prompt_budget(length: int, markers: int) -> int:
    """The most new tokens a ``length``-word prompt with ``markers`` length markers may take."""
    return 3 * length + 8 + markers


def least_budget(length: int, markers: int) -> int:
    """The fewest new tokens a ``length``-word prompt is given room for (2 per word, its
    markers and <|end|>); a query that leaves less is refused."""
    return 2 * length + markers + 1


def item_budget(n_positions: int, n_input: int, length: int, markers: int) -> int:
    """New tokens (``<|end|>`` included) one input of ``n_input`` tokens may generate."""
    return min(n_positions - n_input, prompt_budget(length, markers))


def check_fit(n_positions: int, n_input: int, n_query: int, command: Command,
              markers: int) -> int:
    """The input's budget; raises when it leaves too little of the window for the prompt.

    Args:
        n_positions: the model's window in tokens.
        n_input: tokens of the whole input (command, query, context, ``<|prompt|>``).
        n_query: tokens of the query alone (named in the message).
        command: the command asked for (its length sets the least budget).
        markers: length markers a prompt of that length carries.
    Raises:
        QueryTooLongError: the budget is below ``least_budget``.
    """
    budget = item_budget(n_positions, n_input, command.length, markers)
    need = least_budget(command.length, markers)
    if budget < need:
        most = max(0, n_query - (need - budget))
        raise QueryTooLongError(
            f"query is too long: its {n_query} tokens leave {max(budget, 0)} of the model's "
            f"{n_positions}-token window for the prompt, and a {command.length}-word prompt "
            f"needs {need}; shorten the query to at most {most} tokens or ask for fewer words")
    return budget


@dataclass(frozen=True)
class Plan:
    """One generation batch: its items, their encoded inputs and each input's budget."""

    chunk: list[tuple[str, Command]]  # (query, command) per row
    encoded: list[list[int]]  # token ids of each input
    budgets: np.ndarray  # (B,) int, new tokens each row may generate, <|end|> included

    @property
    def width(self) -> int:
        """Tokens of the longest input."""
        return max(len(e) for e in self.encoded)

    @property
    def budget(self) -> int:
        """Steps the batch runs: the largest budget."""
        return int(self.budgets.max())


def group_items(rooms: Sequence[int], budgets: Sequence[int], batch_size: int,
                rule: str) -> list[list[int]]:
    """Split items into batches an engine can run, in first-fit order.

    Args:
        rooms: per item, window minus its input tokens.
        budgets: per item, its budget (``item_budget``; never above its room).
        batch_size: most items per batch.
        rule: one of ``BUDGET_RULES``.
    Returns:
        Lists of item indices; every index once, each list in increasing order.
    """
    if rule not in BUDGET_RULES:
        raise ValueError(f"unknown budget rule {rule!r}; allowed: {', '.join(BUDGET_RULES)}")
    groups: list[list[int]] = []
    spans: list[tuple[int, int]] = []  # per group: (largest budget, smallest room)
    for i, (room, budget) in enumerate(zip(rooms, budgets)):
        for g, (most, least_room) in enumerate(spans):
            if len(groups[g]) >= batch_size:
                continue
            if rule == "equal" and budget != most:
                continue
            if rule == "window" and max(most, budget) > min(least_room, room):
                continue
            groups[g].append(i)
            spans[g] = (max(most, budget), min(least_room, room))
            break
        else:
            groups.append([i])
            spans.append((budget, room))
    return groups
