"""What every configured controller has: its params (which carry its priority) and its name."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from gridpilot.control.base import Priority


class _Prioritised(Protocol):
    @property
    def priority(self) -> Priority: ...


P = TypeVar("P", bound=_Prioritised)


class ConfiguredController(Generic[P]):
    """``name``, ``priority`` and ``params`` of the :class:`~gridpilot.control.base.Controller`
    protocol, from the controller's params; the subclass adds ``initial_state`` and
    ``decide``."""

    def __init__(self, params: P, name: str) -> None:
        self.params = params
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def priority(self) -> Priority:
        return self.params.priority
