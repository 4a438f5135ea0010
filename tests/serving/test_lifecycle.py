"""A request's lifecycle without a model: whatever way a request ends, its place in the server is
given back once and it is logged once; a refused or failed start takes no place and logs nothing."""

import asyncio
import logging

import pytest

from codelora.config import GenerateConfig, ServeConfig
from codelora.serving.admission import Admission
from codelora.serving.engine import Generation, GenerationJob
from codelora.serving.http_errors import ApiError
from codelora.serving.lifecycle import RequestLifecycle
from codelora.serving.openai_api import Reply, _sse
from codelora.serving.registry import UnknownAdapterError

JOB = GenerationJob([1, 2, 3], None, GenerateConfig(4))


class FakeSequence:
    def __init__(self):
        self.text, self.done, self.cancelled, self.finish_reason = "", False, False, None

    def cancel(self):
        self.cancelled = True


class FakeEngine:
    """Ends each sequence at once with `finish` ("stop", "error"), or never (None); or refuses it."""

    def __init__(self, finish: str | None = "stop", refuse: Exception | None = None):
        self.finish, self.refuse, self.seqs = finish, refuse, []

    def submit(self, job, on_update):
        if self.refuse is not None:
            raise self.refuse
        seq = FakeSequence()
        self.seqs.append(seq)
        if self.finish is not None:
            seq.text, seq.done, seq.finish_reason = "hi", True, self.finish
            on_update(seq, "hi")
        return seq

    def result(self, seq) -> Generation:
        reason = seq.finish_reason or ("cancelled" if seq.cancelled else None)
        return Generation(seq.text, "base", 3, len(seq.text), reason, 0.01, [])


class Client:
    def __init__(self, gone: bool = False):
        self.gone = gone

    async def is_disconnected(self) -> bool:
        return self.gone


def lifecycle(engine: FakeEngine, limit: int = 2) -> RequestLifecycle:
    return RequestLifecycle(engine, ServeConfig(), Admission(limit))


def log_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "codelora.serve"]


async def _answer(lc: RequestLifecycle, client: Client, fail_inside: bool):
    async with lc.admit(JOB, "generate", "q", "id1") as flight:
        assert lc.admission.admitted == 1
        g = await flight.answer(client)
        if fail_inside:
            raise RuntimeError("a bug in the route")
    return g


@pytest.mark.parametrize("finish, gone, fail_inside, outcome", [
    ("stop", False, False, "stop"),  # answered
    ("error", False, False, 500),  # generation failed
    (None, True, False, None),  # the client left: no answer, the sequence cancelled
    ("stop", False, True, RuntimeError),  # an exception in the route
])
def test_every_ending_gives_the_place_back_once_and_logs_once(caplog, finish, gone, fail_inside, outcome):
    caplog.set_level(logging.INFO, "codelora.serve")
    engine = FakeEngine(finish)
    lc = lifecycle(engine)
    try:
        g = asyncio.run(_answer(lc, Client(gone), fail_inside))
        result = g and g.finish_reason
    except ApiError as e:
        result = e.status
    except RuntimeError as e:
        result = type(e)
    assert result == outcome
    assert engine.seqs[0].cancelled == (finish is None)
    assert lc.admission.admitted == 0
    (line,) = log_lines(caplog)
    assert line.startswith("id1 generate model=base prompt_tokens=3")
    assert f"finish={finish or 'cancelled'}" in line


def test_a_full_server_refuses_with_429_and_a_failed_start_takes_no_place(caplog):
    caplog.set_level(logging.INFO, "codelora.serve")
    lc = lifecycle(FakeEngine(None), limit=1)

    async def second_while_first_runs():
        async with lc.admit(JOB, "generate", "q", "first"):
            async with lc.admit(JOB, "generate", "q", "second"):
                pass

    with pytest.raises(ApiError) as refused:
        asyncio.run(second_while_first_runs())
    assert refused.value.status == 429 and "server busy" in refused.value.message
    assert (lc.admission.admitted, lc.admission.refused) == (0, 1)
    assert len(log_lines(caplog)) == 1  # the first one only

    lc = lifecycle(FakeEngine(refuse=UnknownAdapterError("unknown adapter 'x'")))

    async def unknown_adapter():
        async with lc.admit(JOB, "generate", "q", "id"):
            pass

    with pytest.raises(ApiError) as unknown:
        asyncio.run(unknown_adapter())
    assert unknown.value.status == 404 and lc.admission.admitted == 0


@pytest.mark.parametrize("read_to_end", [True, False])
def test_a_stream_holds_its_place_until_its_end_or_its_client_leaves(caplog, read_to_end):
    """`answer` runs the event generator's first step (the admission) before the response starts;
    the place is given back when the stream ends or when the generator is closed mid-stream."""
    caplog.set_level(logging.INFO, "codelora.serve")
    lc = lifecycle(FakeEngine("stop" if read_to_end else None))

    async def stream():
        events = _sse(Client(), lc, JOB, Reply("chat", "base", "base"), False, "q")
        assert await anext(events) == "" and lc.admission.admitted == 1
        assert '"role": "assistant"' in await anext(events)
        if read_to_end:
            return [e async for e in events]
        await events.aclose()  # what a client that goes away mid-stream leads to
        return []

    rest = asyncio.run(stream())
    assert lc.admission.admitted == 0
    (line,) = log_lines(caplog)
    assert " chat-stream model=base " in line
    if read_to_end:
        assert rest[-1] == "data: [DONE]\n\n" and '"finish_reason": "stop"' in rest[-2]
    else:
        assert "finish=cancelled" in line
