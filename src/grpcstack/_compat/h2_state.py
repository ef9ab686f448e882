"""h2's connection and stream state machines, looked up without an ``Enum.__hash__`` call.

h2 finds a transition by ``_transitions[(state, input)]``: hashing that key calls
``Enum.__hash__`` (Python code, ``hash(self._name_)``) for every plain-Enum member in it, two
per connection input and one per stream input (StreamState is an IntEnum, hashed in C), some
25 calls per unary call. ``lean_state_machines`` keys the same transition tables by the members'
values (ints, hashed in C) and installs ``process_input`` methods that do what h2's do: the same
target states, side-effect functions, errors and messages (tests/test_h2_state.py compares every
state and input with h2's own).
"""

from __future__ import annotations

from typing import Any

import h2
import h2.connection
import h2.stream
from h2.connection import ConnectionInputs, ConnectionState, H2ConnectionStateMachine
from h2.exceptions import ProtocolError
from h2.stream import H2StreamStateMachine, StreamInputs, StreamState

#: h2 versions whose state machines these reproduce
STATE_MACHINES_H2_VERSIONS = frozenset({"4.4.1"})

_ORIGINAL = {
    H2ConnectionStateMachine: H2ConnectionStateMachine.process_input,
    H2StreamStateMachine: H2StreamStateMachine.process_input,
}
_CONNECTION: dict[tuple[int, int], Any] = {
    (state._value_, input_._value_): target
    for (state, input_), target in H2ConnectionStateMachine._transitions.items()
}
_STREAM: dict[tuple[int, int], Any] = {
    (state._value_, input_._value_): target
    for (state, input_), target in h2.stream._transitions.items()
}


def _connection_process_input(self: Any, input_: ConnectionInputs) -> list[Any]:
    # h2 asks isinstance: an Enum with members has no subclasses, so the type is the same test
    if type(input_) is not ConnectionInputs:
        raise ValueError("Input must be an instance of ConnectionInputs")
    try:
        func, target_state = _CONNECTION[(self.state._value_, input_._value_)]
    except KeyError as e:
        old_state = self.state
        self.state = ConnectionState.CLOSED
        raise ProtocolError(f"Invalid input {input_} in state {old_state}") from e
    self.state = target_state
    if func is not None:
        return func()  # type: ignore[no-any-return]
    return []


def _stream_process_input(self: Any, input_: StreamInputs) -> list[Any]:
    if type(input_) is not StreamInputs:
        raise ValueError("Input must be an instance of StreamInputs")
    try:
        func, target_state = _STREAM[(self.state._value_, input_._value_)]
    except KeyError as err:
        old_state = self.state
        self.state = StreamState.CLOSED
        raise ProtocolError(f"Invalid input {input_} in state {old_state}") from err
    previous_state = self.state
    self.state = target_state
    if func is not None:
        try:
            return func(self, previous_state)  # type: ignore[no-any-return]
        except ProtocolError:
            self.state = StreamState.CLOSED
            raise
        except AssertionError as err:  # pragma: no cover (h2's own guard)
            self.state = StreamState.CLOSED
            raise ProtocolError(err) from err
    return []


def lean_state_machines() -> bool:
    """Install the value-keyed ``process_input`` on h2's two state machines (both sides of every
    connection in the process). Only on the h2 it was written against; True when in place."""
    if h2.__version__ not in STATE_MACHINES_H2_VERSIONS:
        return False
    H2ConnectionStateMachine.process_input = _connection_process_input  # type: ignore[method-assign]
    H2StreamStateMachine.process_input = _stream_process_input  # type: ignore[method-assign]
    return True


def original_process_input(machine: type) -> Any:
    """h2's own method (for the differential test)."""
    return _ORIGINAL[machine]
