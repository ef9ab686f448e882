"""_compat.h2_state: the value-keyed state machines do what h2's own do, for every state and
input (target state, side effects, events, errors and their messages)."""

from __future__ import annotations

import itertools
from typing import Any

import h2
import pytest
from h2.connection import ConnectionInputs, ConnectionState, H2ConnectionStateMachine
from h2.stream import H2StreamStateMachine, StreamInputs, StreamState

from grpcstack._compat import STATE_MACHINES_H2_VERSIONS, lean_state_machines
from grpcstack._compat.h2_state import (
    _connection_process_input,
    _stream_process_input,
    original_process_input,
)


def _outcome(method: Any, machine: Any, input_: Any) -> tuple[Any, ...]:
    try:
        result: Any = [(type(e), vars(e)) for e in method(machine, input_)]
    except Exception as exc:
        result = (type(exc), str(exc), type(exc.__cause__))
    return result, dict(vars(machine))


def test_the_pinned_h2_is_the_one_reproduced() -> None:
    assert h2.__version__ in STATE_MACHINES_H2_VERSIONS, (
        "h2 changed: re-check _compat.h2_state against h2's process_input methods"
    )
    assert lean_state_machines()
    assert H2ConnectionStateMachine.process_input is _connection_process_input
    assert H2StreamStateMachine.process_input is _stream_process_input


def test_the_connection_machine_matches_h2_everywhere() -> None:
    theirs = original_process_input(H2ConnectionStateMachine)
    for state, input_ in itertools.product(ConnectionState, ConnectionInputs):
        a, b = H2ConnectionStateMachine(), H2ConnectionStateMachine()
        a.state = b.state = state
        assert _outcome(_connection_process_input, a, input_) == _outcome(theirs, b, input_)


@pytest.mark.parametrize("client", [True, False, None])
def test_the_stream_machine_matches_h2_everywhere(client: bool | None) -> None:
    theirs = original_process_input(H2StreamStateMachine)
    for state, input_ in itertools.product(StreamState, StreamInputs):
        a, b = H2StreamStateMachine(1), H2StreamStateMachine(1)
        for m in (a, b):
            m.state, m.client = state, client
        assert _outcome(_stream_process_input, a, input_) == _outcome(theirs, b, input_), (
            state,
            input_,
        )


def test_inputs_of_the_wrong_kind_are_refused_as_h2_does() -> None:
    for ours, machine, wrong in (
        (_connection_process_input, H2ConnectionStateMachine(), StreamInputs.SEND_HEADERS),
        (_stream_process_input, H2StreamStateMachine(1), ConnectionInputs.SEND_HEADERS),
    ):
        theirs = original_process_input(type(machine))
        for value in (wrong, None, 0):
            assert _outcome(ours, machine, value) == _outcome(theirs, machine, value)
