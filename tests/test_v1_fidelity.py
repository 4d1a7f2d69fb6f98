"""/v1 as OpenAI's own clients use it: the official `openai` package and `langchain-openai` against a live
server whose `openai` accounts talk to FakeOpenAI over real HTTP.

Tools (whole and streamed as indexed deltas, and the round trip with a `tool` message), structured output
(`chat.completions.parse` with a pydantic model), several choices, logprobs, `system_fingerprint`, fields the
server does not know and sampling fields sent on unchanged, the model sent upstream (asked, alias, default),
routing by what an account type can do, the upstream's own 4xx as the SDK's exceptions, embeddings, the
model list with aliases, a bad key, `x-request-id`, and the usage ledger.
"""

from __future__ import annotations

import functools
import json
import operator
import re
import time
from typing import Literal

import openai
import pytest
import requests
from fakes import FakeOpenAI
from fakes.openai_server import sample_from_schema
from pydantic import BaseModel
from upstream_fixtures import openai_account, start_with_user

ALIASES = {"gpt-3.5-turbo": "gpt-4o-mini", "embed-small": "text-embedding-3-small"}
REQUEST_ID = re.compile(r"req_[0-9a-f]{32}")
UPSTREAM_KEY = "sk-test-key-0123456789"  # openai_account's default api_key
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a time zone",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
    },
}
QUESTION = [
    {"role": "system", "content": "Answer with the tools you are given."},
    {"role": "user", "content": "What is the weather in Paris?"},
]
HI = [{"role": "user", "content": "hi"}]


class Weather(BaseModel):
    city: str
    temperature_c: float
    conditions: list[str]
    wind: Literal["calm", "breezy", "storm"]


class GetWeather(BaseModel):
    """The current weather in a city."""

    city: str
    unit: Literal["celsius", "fahrenheit"]


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def fake():
    with FakeOpenAI() as upstream:
        yield upstream


@pytest.fixture
def setup(make_server, admin, fake, sdk):
    """A server whose one openai account (on the fake) serves gpt-4o-mini (its default), gpt-4o and an
    embedding model, with aliases for two of them; a user's key and SDK client."""
    account = openai_account(fake, models=["gpt-4o", "text-embedding-3-small"])
    server, key = start_with_user(make_server, admin, [account], model_aliases=ALIASES)
    return server, key, sdk(server, key)


def last_sent(fake) -> dict:
    """The body of the newest chat request the fake received."""
    return fake.chats()[-1]["body"]


def tool_calls_of(chunks) -> dict[int, dict]:
    """Join streamed tool call deltas by index: {index: {"id", "name", "arguments"}}."""
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = delta.id or call["id"]
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    return calls


def texts_by_choice(chunks) -> dict[int, str]:
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    return texts


def finishes_by_choice(chunks) -> dict[int, list[str]]:
    """The finish_reasons each choice's chunks carried, in order."""
    found: dict[int, list[str]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.finish_reason is not None:
                found.setdefault(choice.index, []).append(choice.finish_reason)
    return found


def accounts(server, admin) -> dict[str, dict]:
    response = server.get("/api/accounts", admin)
    assert response.status_code == 200, response.text
    return {a["name"]: a for a in response.json()["accounts"]}


def by_model(server, admin) -> dict[str, dict]:
    response = server.get("/api/usage", admin, params={"group_by": "model"})
    assert response.status_code == 200, response.text
    return {g["model"]: g for g in response.json()["groups"]}


def wait_for(predicate, timeout: float = 5.0):
    """Poll predicate until it returns something true (a turn's ledger line is written as its reply ends)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def assistant_turn(calls: list[tuple[str, str, str]]) -> dict:
    """The assistant message that made these tool calls, (id, name, arguments) each, as a client sends it back."""
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}
            for cid, name, arguments in calls
        ],
    }


# -- tools -------------------------------------------------------------------------------------


def test_tool_call_and_its_result_round_trip(setup, fake):
    """A forced tool call comes back whole (finish_reason tool_calls); the tool's result sent as a `tool` message
    gets the final text. The fake gets tools, tool_choice, parallel_tool_calls and every message as sent."""
    _server, _key, client = setup
    fake.tool_arguments = {"city": "Paris", "unit": "celsius"}
    choice = {"type": "function", "function": {"name": "get_weather"}}
    first = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=QUESTION,
        tools=[TIME_TOOL, WEATHER_TOOL],
        tool_choice=choice,
        parallel_tool_calls=False,
    )
    [answer] = first.choices
    assert answer.finish_reason == "tool_calls" and answer.message.content is None
    [call] = answer.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    assert last_sent(fake) == {
        "model": "gpt-4o-mini",
        "messages": QUESTION,
        "tools": [TIME_TOOL, WEATHER_TOOL],
        "tool_choice": choice,
        "parallel_tool_calls": False,
    }

    history = [
        *QUESTION,
        assistant_turn([(call.id, call.function.name, call.function.arguments)]),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    final = client.chat.completions.create(model="gpt-4o-mini", messages=history, tools=[TIME_TOOL, WEATHER_TOOL])
    [reply] = final.choices
    assert (reply.message.content, reply.message.tool_calls, reply.finish_reason) == (
        "tool result: sunny, 21 C",
        None,
        "stop",
    )
    assert last_sent(fake)["messages"] == history
    assert len(fake.chats()) == 2


def test_streamed_parallel_tool_calls_as_indexed_deltas_and_the_round_trip(setup, fake):
    """Two tool calls stream as indexed deltas (id and name first, arguments in pieces) that join to the
    upstream's calls; the last finish_reason is tool_calls; no usage chunk unless asked. The two results go back
    as two `tool` messages, and the final text streams."""
    _server, _key, client = setup
    fake.parallel_tools = True
    tools = [WEATHER_TOOL, TIME_TOOL]
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, tools=tools, stream=True))

    calls = tool_calls_of(chunks)
    assert sorted(calls) == [0, 1]
    assert [calls[i]["name"] for i in (0, 1)] == ["get_weather", "get_time"]
    for index, tool in enumerate(tools):
        assert json.loads(calls[index]["arguments"]) == sample_from_schema(tool["function"]["parameters"])
        assert calls[index]["id"].startswith("call_")
    argument_pieces = [
        d for c in chunks for ch in c.choices for d in ch.delta.tool_calls or () if d.function and d.function.arguments
    ]
    assert len(argument_pieces) >= 6  # each call's arguments came in at least three pieces
    assert finishes_by_choice(chunks) == {0: ["tool_calls"]}
    assert all(c.choices and c.usage is None for c in chunks)
    sent = last_sent(fake)
    assert sent["tools"] == tools and sent["messages"] == QUESTION and "tool_choice" not in sent
    assert sent["stream"] is True

    history = [
        *QUESTION,
        assistant_turn([(calls[i]["id"], calls[i]["name"], calls[i]["arguments"]) for i in (0, 1)]),
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "14:00"},
    ]
    final = list(client.chat.completions.create(model="gpt-4o-mini", messages=history, tools=tools, stream=True))
    assert texts_by_choice(final) == {0: "tool result: 14:00"}
    assert finishes_by_choice(final) == {0: ["stop"]}
    assert tool_calls_of(final) == {}
    assert last_sent(fake)["messages"] == history


# -- structured output -------------------------------------------------------------------------


def test_parse_with_a_pydantic_model(setup, fake):
    """chat.completions.parse sends the model's JSON schema (strict) and returns the parsed object, whole and
    streamed; the object is the fake's sample of the schema that reached it, so the schema went unchanged."""
    _server, _key, client = setup
    expected = Weather(city="x", temperature_c=1.5, conditions=["x"], wind="calm")
    completion = client.chat.completions.parse(model="gpt-4o-mini", messages=QUESTION, response_format=Weather)
    message = completion.choices[0].message
    assert isinstance(message.parsed, Weather) and message.parsed == expected
    assert json.loads(message.content) == expected.model_dump()
    fmt = last_sent(fake)["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Weather"
    assert fmt["json_schema"]["strict"] is True
    assert set(fmt["json_schema"]["schema"]["properties"]) == {"city", "temperature_c", "conditions", "wind"}

    with client.chat.completions.stream(model="gpt-4o-mini", messages=QUESTION, response_format=Weather) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == expected
    assert last_sent(fake)["response_format"] == fmt and last_sent(fake)["stream"] is True


def test_parse_with_a_pydantic_function_tool(setup, fake):
    """A strict pydantic_function_tool's call comes back with its arguments parsed into the model."""
    _server, _key, client = setup
    fake.tool_arguments = {"city": "Oslo", "unit": "fahrenheit"}
    completion = client.chat.completions.parse(
        model="gpt-4o-mini", messages=QUESTION, tools=[openai.pydantic_function_tool(GetWeather)]
    )
    [call] = completion.choices[0].message.tool_calls
    assert call.function.parsed_arguments == GetWeather(city="Oslo", unit="fahrenheit")
    [tool] = last_sent(fake)["tools"]
    assert tool["function"]["name"] == "GetWeather" and tool["function"]["strict"] is True


# -- choices, logprobs, fingerprint, fields ------------------------------------------------------


def test_several_choices_with_logprobs_fingerprint_and_service_tier(setup, fake):
    """n=2 gives two choices, each with its logprobs (top_logprobs alternatives); system_fingerprint and the
    service_tier asked for come back as the upstream sent them."""
    _server, _key, client = setup
    messages = [{"role": "user", "content": "two answers"}]
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, n=2, logprobs=True, top_logprobs=2, service_tier="flex"
    )
    assert [c.index for c in completion.choices] == [0, 1]
    assert [c.message.content for c in completion.choices] == ["echo: two answers #0", "echo: two answers #1"]
    for choice in completion.choices:
        assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
        assert all(len(t.top_logprobs) == 2 and t.logprob < 0 for t in choice.logprobs.content)
    assert completion.system_fingerprint == "fp_fake" and completion.service_tier == "flex"
    assert completion.usage.completion_tokens == 8  # four words in each choice
    sent = last_sent(fake)
    assert (sent["n"], sent["logprobs"], sent["top_logprobs"], sent["service_tier"]) == (2, True, 2, "flex")


def test_several_choices_streamed_with_logprobs(setup, fake):
    """Streamed n=2: each choice's chunks join to its text and its logprobs; every chunk has the fingerprint."""
    _server, _key, client = setup
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "two answers"}], n=2, logprobs=True, stream=True
        )
    )
    assert texts_by_choice(chunks) == {0: "echo: two answers #0", 1: "echo: two answers #1"}
    assert finishes_by_choice(chunks) == {0: ["stop"], 1: ["stop"]}
    for index in (0, 1):
        tokens = [
            t.token
            for c in chunks
            for ch in c.choices
            if ch.index == index and ch.logprobs and ch.logprobs.content
            for t in ch.logprobs.content
        ]
        assert "".join(tokens) == f"echo: two answers #{index}"
    assert {c.system_fingerprint for c in chunks} == {"fp_fake"}


SAMPLING = {
    "temperature": 0.2,
    "top_p": 0.9,
    "seed": 7,
    "metadata": {"purpose": "fidelity test"},
    "max_tokens": 50,
    "max_completion_tokens": 60,
    "stop": ["\n\n", "END"],
    "user": "end-user-42",
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "logit_bias": {"50256": -100},
    "reasoning_effort": "low",
    "store": False,
}
UNKNOWN = {"custom_field": {"nested": [1, {"deep": True}], "none": None}, "top_k": 40}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_sampling_and_unknown_fields_reach_the_upstream_unchanged(setup, fake, stream):
    """Every field the caller sends (sampling ones, and ones this server does not know, via extra_body) reaches the
    upstream unchanged and nothing else is added, but the server's own stream options: it always asks for usage,
    and the caller who did not gets no usage chunk."""
    _server, _key, client = setup
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=HI,
                stream=True,
                stream_options={"include_usage": False},
                extra_body=UNKNOWN,
                **SAMPLING,
            )
        )
        assert texts_by_choice(chunks) == {0: "echo: hi"}
        assert all(c.choices and c.usage is None for c in chunks)
        owned = {"stream": True, "stream_options": {"include_usage": True}}
    else:
        completion = client.chat.completions.create(model="gpt-4o-mini", messages=HI, extra_body=UNKNOWN, **SAMPLING)
        assert completion.choices[0].message.content == "echo: hi"
        owned = {}
    assert last_sent(fake) == {"model": "gpt-4o-mini", "messages": HI, **SAMPLING, **UNKNOWN, **owned}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_finish_reasons_and_refusals_come_back_as_the_upstream_gave_them(setup, fake, stream):
    """max_tokens cut: `length`; a content filter: `content_filter`; a refusal in `refusal`."""
    _server, _key, client = setup
    messages = [{"role": "user", "content": "one two three four"}]

    def ask(**fields):
        if not stream:
            choice = client.chat.completions.create(model="gpt-4o-mini", messages=messages, **fields).choices[0]
            return choice.message.content, choice.message.refusal, choice.finish_reason
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True, **fields))
        refusal = "".join(ch.delta.refusal or "" for c in chunks for ch in c.choices) or None
        return texts_by_choice(chunks)[0] or None, refusal, finishes_by_choice(chunks)[0][-1]

    assert ask(max_tokens=2) == ("echo: one", None, "length")
    fake.finish_reason = "content_filter"
    assert ask() == ("echo: one two three four", None, "content_filter")
    fake.finish_reason, fake.refusal = None, "I can't help with that."
    assert ask() == (None, "I can't help with that.", "stop")


@pytest.mark.parametrize(
    ("asked", "upstream"),
    [("gpt-4o-mini", "gpt-4o-mini"), ("gpt-4o", "gpt-4o"), ("gpt-3.5-turbo", "gpt-4o-mini"), (None, "gpt-4o-mini")],
    ids=["default", "another served", "alias", "none asked"],
)
def test_the_model_sent_upstream(setup, fake, asked, upstream):
    """The upstream gets the model asked for, the one an alias stands for, or the account's own default."""
    server, key, _client = setup
    body = {"messages": HI} if asked is None else {"model": asked, "messages": HI}
    response = server.post("/v1/chat/completions", key, json=body)
    assert response.status_code == 200, response.text
    assert last_sent(fake)["model"] == upstream
    assert response.json()["model"] == upstream  # the upstream's own answer, relayed


# -- which account type may answer ---------------------------------------------------------------


NEEDS = {
    "tools": ({"tools": [WEATHER_TOOL]}, HI, "tools"),
    "tool_choice": ({"tools": [WEATHER_TOOL], "tool_choice": "required"}, HI, "tools"),
    "json_schema": (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}},
        HI,
        "response_format",
    ),
    "json_object": ({"response_format": {"type": "json_object"}}, [{"role": "user", "content": "JSON please"}], None),
    "n": ({"n": 2}, HI, "n"),
    "logprobs": ({"logprobs": True}, HI, "logprobs"),
    "image part": (
        {},
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                ],
            }
        ],
        "messages",
    ),
    "tool message": (
        {},
        [
            *QUESTION,
            assistant_turn([("call_1", "get_weather", '{"city": "Paris", "unit": "celsius"}')]),
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        "messages",
    ),
}


@pytest.fixture
def shared_model(make_server, admin, fake, sdk):
    """A demo account and an openai account both serving gpt-4o-mini (the demo lists it in `models`)."""
    demo = {"name": "demo", "type": "demo", "models": ["gpt-4o-mini"]}
    server, key = start_with_user(make_server, admin, [demo, openai_account(fake)])
    return server, key, sdk(server, key)


def test_plain_requests_go_to_either_account_but_needs_only_to_the_able_one(shared_model, fake):
    """Plain requests for the shared model take turns over both accounts; every request that needs tools,
    structured output, n, logprobs, images or tool messages reaches the openai account, twice in a row each."""
    _server, _key, client = shared_model
    replies = [
        client.chat.completions.create(model="gpt-4o-mini", messages=HI).choices[0].message.content for _ in "ab"
    ]
    assert len(fake.chats()) == 1 and sum(r.startswith("[demo account]") for r in replies) == 1, replies
    for name, (fields, messages, _param) in NEEDS.items():
        for stream in (False, True):
            before = len(fake.chats())
            answer = client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=stream, **fields)
            if stream:
                chunks = list(answer)
                assert {c.system_fingerprint for c in chunks} == {"fp_fake"}, name
            else:
                assert answer.system_fingerprint == "fp_fake", name  # the demo gives none
            assert len(fake.chats()) == before + 1, name
            assert {k: v for k, v in last_sent(fake).items() if k in fields} == fields, name


@pytest.mark.parametrize("case", [c for c in NEEDS if NEEDS[c][2]])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_only_a_demo_account_refuses_what_it_cannot_do_naming_the_parameter(make_server, admin, sdk, case, stream):
    """With only the demo serving the model, a request needing what it cannot do is a 400 naming the parameter."""
    server, key = start_with_user(make_server, admin, [{"name": "demo", "type": "demo"}])
    fields, messages, param = NEEDS[case]
    if case == "tool_choice":
        fields = {"tool_choice": "required"}  # alone: the tool_choice is what asks for tools
        param = "tool_choice"
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(server, key).chat.completions.create(model="demo", messages=messages, stream=stream, **fields)
    error = raised.value
    assert (error.status_code, error.param, error.type) == (400, param, "invalid_request_error")
    message = error.body["message"]
    assert message.startswith(f"{param}: ") and "demo" in message


def test_a_demo_account_ignores_fields_that_only_tune_sampling(make_server, admin, sdk):
    """temperature, seed, max_tokens, stop, user, metadata and the like do not keep the demo from answering."""
    server, key = start_with_user(make_server, admin, [{"name": "demo", "type": "demo"}])
    completion = sdk(server, key).chat.completions.create(model="demo", messages=HI, **SAMPLING)
    assert completion.choices[0].message.content.startswith("[demo account]")


# -- the upstream's own refusals -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, openai.BadRequestError),
        (404, openai.NotFoundError),
        (409, openai.ConflictError),
        (413, openai.APIStatusError),
        (422, openai.UnprocessableEntityError),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_upstream_refusal_reaches_the_sdk_as_its_exception(make_server, admin, fake, sdk, status, exception, stream):
    """The upstream's 4xx reaches the SDK with its status, message, param and code; no other account is tried,
    the account stays ok (no error counted), and the next request is answered."""
    accounts_ = [openai_account(fake), openai_account(fake, name="oa-2", api_key="sk-second-key-0123456789")]
    server, key = start_with_user(make_server, admin, accounts_)
    client = sdk(server, key)
    message = "Invalid schema for function 'get_weather': 'strng' is not valid under any of the given schemas."
    fake.reject_next(status, message, param="tools[0].function.parameters", code="invalid_function_parameters")
    with pytest.raises(exception) as raised:
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=QUESTION, tools=[WEATHER_TOOL], stream=stream
        )
        list(answer) if stream else None
    error = raised.value
    assert error.status_code == status
    assert error.body["message"] == message
    assert (error.param, error.code) == ("tools[0].function.parameters", "invalid_function_parameters")
    assert error.type == "invalid_request_error"
    assert len(fake.chats()) == 1  # the caller's fault: not retried on the other account
    states = accounts(server, admin)
    for name in ("oa", "oa-2"):
        assert (states[name]["state"], states[name]["errors"], states[name]["last_error"]) == ("ok", 0, None), states
    assert client.chat.completions.create(model="gpt-4o-mini", messages=HI).choices[0].message.content == "echo: hi"


def test_an_upstream_refusal_is_scrubbed_of_the_accounts_key(setup, fake):
    """An upstream message that quotes the account's key reaches the caller without it."""
    _server, _key, client = setup
    fake.reject_next(400, f"Unrecognized request argument supplied: with key {UPSTREAM_KEY}", param="foo")
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI, extra_body={"foo": 1})
    assert raised.value.param == "foo" and "Unrecognized request argument supplied" in raised.value.message
    assert UPSTREAM_KEY not in raised.value.response.text and UPSTREAM_KEY[3:] not in raised.value.response.text


def test_a_number_json_cannot_carry_is_a_400_naming_it(setup, fake):
    """Python's JSON reader takes NaN; an upstream's cannot: the caller gets a 400 saying why, not a 5xx."""
    server, key, _client = setup
    body = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    answer = server.session.post(
        server.url + "/v1/chat/completions",
        data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 400, answer.text
    assert "NaN or Infinity" in answer.json()["error"]["message"]
    assert fake.chats() == []


# -- embeddings and models -----------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["base64", "float"], ids=["sdk default base64", "float"])
@pytest.mark.parametrize("model", ["text-embedding-3-small", "embed-small"], ids=["model", "alias"])
def test_embeddings(setup, fake, encoding, model):
    """client.embeddings.create (the SDK asks base64 unless told float) gets the upstream's vectors, in order,
    with its usage; the upstream gets the embedding model (an alias resolved) and the caller's fields."""
    _server, _key, client = setup
    fields = {} if encoding == "base64" else {"encoding_format": "float"}
    result = client.embeddings.create(model=model, input=["hello world", "bye"], dimensions=6, user="u-1", **fields)
    assert [d.index for d in result.data] == [0, 1]
    assert [d.embedding for d in result.data] == [
        FakeOpenAI.embedding_for("hello world", 6),
        FakeOpenAI.embedding_for("bye", 6),
    ]
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (3, 3)
    assert result.model == "text-embedding-3-small"
    [sent] = fake.embeddings_requests()
    assert sent["body"] == {
        "model": "text-embedding-3-small",
        "input": ["hello world", "bye"],
        "dimensions": 6,
        "user": "u-1",
        "encoding_format": encoding,
    }
    assert fake.chats() == []


def test_embeddings_need_an_openai_account_serving_the_model(make_server, admin, fake, sdk):
    """An embedding model only a demo account lists, or that nobody serves: an error naming `model`."""
    demo = {"name": "demo", "type": "demo", "models": ["text-embedding-3-small"]}
    server, key = start_with_user(make_server, admin, [demo, openai_account(fake)])
    client = sdk(server, key)
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert raised.value.param == "model"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.embeddings.create(model="no-such-embedder", input="hello")
    assert (unknown.value.param, unknown.value.code) == ("model", "model_not_found")
    assert fake.embeddings_requests() == []


def test_models_lists_models_and_aliases(setup):
    """/v1/models: the account's default, its other models, then the aliases; each retrievable."""
    _server, _key, client = setup
    listed = [m.id for m in client.models.list()]
    assert listed == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "gpt-3.5-turbo", "embed-small"]
    assert client.models.retrieve("gpt-3.5-turbo").id == "gpt-3.5-turbo"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-5-nonexistent")


# -- keys and request ids ------------------------------------------------------------------------


def test_a_bad_key_is_an_authentication_error_that_never_echoes_the_key(setup, fake, sdk):
    """An unknown key: 401 invalid_api_key, "Incorrect API key provided...", the key nowhere in the answer, on
    chat (whole and streamed), embeddings and models; nothing reaches the upstream."""
    server, _key, _client = setup
    bad = "cas-wrong-key-f00dfeedbeef0123456789"
    client = sdk(server, bad)
    calls = {
        "chat": lambda: client.chat.completions.create(model="gpt-4o-mini", messages=HI),
        "chat stream": lambda: list(client.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)),
        "embeddings": lambda: client.embeddings.create(model="embed-small", input="x"),
        "models": lambda: client.models.list(),
    }
    for name, call in calls.items():
        with pytest.raises(openai.AuthenticationError) as raised:
            call()
        error = raised.value
        assert (error.status_code, error.code) == (401, "invalid_api_key"), name
        assert error.body["message"].startswith("Incorrect API key provided"), (name, error.body)
        text = error.response.text + json.dumps(dict(error.response.headers))
        assert not [bad[i : i + 8] for i in range(len(bad) - 7) if bad[i : i + 8] in text], (name, text)
        assert REQUEST_ID.fullmatch(error.request_id or ""), name
    assert fake.requests == []


def test_every_answer_has_its_own_request_id(setup, make_server, admin, sdk):
    """x-request-id (req_ + 32 hex) on answers whole and streamed, on refusals (ours and the upstream's), on
    embeddings and models, different on each; the SDK reads it as _request_id / request_id."""
    server, _key, client = setup
    seen = []
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
    seen.append(raw.headers["x-request-id"])
    assert raw.parse()._request_id == seen[-1]
    seen.append(client.chat.completions.create(model="gpt-4o-mini", messages=HI)._request_id)
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=HI, stream=True
    ) as streamed:
        seen.append(streamed.headers["x-request-id"])
        assert "".join(streamed.iter_lines()).endswith("data: [DONE]")
    seen.append(client.embeddings.with_raw_response.create(model="embed-small", input="x").headers["x-request-id"])
    seen.append(client.models.with_raw_response.list().headers["x-request-id"])
    for call in (
        lambda: client.chat.completions.create(model="nope", messages=HI),  # our 404
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=[]),  # our 400
    ):
        with pytest.raises(openai.APIStatusError) as raised:
            call()
        seen.append(raised.value.request_id)
    seen.append(requests.get(server.url + "/v1/models", timeout=10).headers.get("x-request-id"))  # no key: 401
    assert all(REQUEST_ID.fullmatch(s or "") for s in seen), seen
    assert len(set(seen)) == len(seen), seen


def test_an_upstream_refusal_has_a_request_id(setup, fake):
    _server, _key, client = setup
    fake.reject_next(422, "Unprocessable: bad tool schema", param="tools")
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI, tools=[WEATHER_TOOL])
    assert REQUEST_ID.fullmatch(raised.value.request_id or "")


# -- the ledger ----------------------------------------------------------------------------------


def test_the_ledger_counts_tool_turns_and_embeddings_with_the_upstreams_tokens(setup, admin, fake):
    """A tool-call turn (whole), a streamed one, the tool result's turn and an embeddings request are each one
    line, with the token counts the upstream gave (none estimated), under the model sent upstream."""
    server, _key, client = setup
    first = client.chat.completions.create(model="gpt-3.5-turbo", messages=QUESTION, tools=[WEATHER_TOOL])
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=QUESTION,
            tools=[WEATHER_TOOL],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and finishes_by_choice(chunks) == {0: ["tool_calls"]}
    [call] = first.choices[0].message.tool_calls
    history = [
        *QUESTION,
        assistant_turn([(call.id, call.function.name, call.function.arguments)]),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny and warm"},
    ]
    final = client.chat.completions.create(model="gpt-4o-mini", messages=history, tools=[WEATHER_TOOL])
    embedded = client.embeddings.create(model="embed-small", input=["one two three", "four"])
    usages = [first.usage, chunks[-1].usage, final.usage]
    assert all(u.completion_tokens > 0 and u.prompt_tokens > 0 for u in usages)
    prompt, completion = sum(u.prompt_tokens for u in usages), sum(u.completion_tokens for u in usages)

    groups = wait_for(lambda: (g := by_model(server, admin)) and sum(x["requests"] for x in g.values()) >= 4 and g)
    assert set(groups) == {"gpt-4o-mini", "text-embedding-3-small"}, groups
    chat, embeddings = groups["gpt-4o-mini"], groups["text-embedding-3-small"]
    assert {k: chat[k] for k in ("requests", "prompt_tokens", "completion_tokens", "errors", "estimated")} == {
        "requests": 3,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "errors": 0,
        "estimated": 0,
    }
    assert {k: embeddings[k] for k in ("requests", "prompt_tokens", "completion_tokens", "errors", "estimated")} == {
        "requests": 1,
        "prompt_tokens": embedded.usage.prompt_tokens,
        "completion_tokens": 0,
        "errors": 0,
        "estimated": 0,
    }
    assert embedded.usage.prompt_tokens == 4


# -- langchain-openai ------------------------------------------------------------------------------


@pytest.fixture
def chat_model(setup, monkeypatch):
    """Return make(**options): a langchain ChatOpenAI on the server's /v1 (no tracing, no retries)."""
    from langchain_openai import ChatOpenAI

    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGSMITH_API_KEY", "LANGCHAIN_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    server, key, _client = setup

    def make(**options):
        return ChatOpenAI(
            base_url=server.url + "/v1", api_key=key, model="gpt-4o-mini", max_retries=0, timeout=10, **options
        )

    return make


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_langchain_bind_tools_returns_tool_calls_and_takes_the_result(chat_model, fake, stream):
    """bind_tools(...).invoke (or .stream, joined) gives the tool call with parsed args; a ToolMessage with the
    result gets the final text."""
    from langchain_core.messages import HumanMessage, ToolMessage

    fake.tool_arguments = {"city": "Paris", "unit": "celsius"}
    llm = chat_model().bind_tools([GetWeather])
    question = [HumanMessage("What is the weather in Paris?")]
    reply = functools.reduce(operator.add, llm.stream(question)) if stream else llm.invoke(question)
    [call] = reply.tool_calls
    assert (call["name"], call["args"]) == ("GetWeather", {"city": "Paris", "unit": "celsius"})
    assert call["id"].startswith("call_")
    [tool] = last_sent(fake)["tools"]
    assert tool["function"]["name"] == "GetWeather" and set(tool["function"]["parameters"]["properties"]) == {
        "city",
        "unit",
    }
    final = llm.invoke([*question, reply, ToolMessage("sunny", tool_call_id=call["id"])])
    assert final.content == "tool result: sunny" and final.tool_calls == []
    sent = last_sent(fake)["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == call["id"] and sent[2] == {
        "role": "tool",
        "content": "sunny",
        "tool_call_id": call["id"],
    }


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_with_structured_output_returns_the_model(chat_model, fake, method):
    """with_structured_output(PydanticModel) by JSON schema (langchain's default) or by a forced tool call."""
    fake.json_output = fake.tool_arguments = {
        "city": "Rome",
        "temperature_c": 24.5,
        "conditions": ["sunny"],
        "wind": "calm",
    }
    result = chat_model().with_structured_output(Weather, method=method).invoke("Weather in Rome?")
    assert result == Weather(city="Rome", temperature_c=24.5, conditions=["sunny"], wind="calm")
    sent = last_sent(fake)
    if method == "json_schema":
        assert sent["response_format"]["type"] == "json_schema"
        assert sent["response_format"]["json_schema"]["name"] == "Weather"
    else:
        assert sent["tool_choice"]["function"]["name"] == "Weather" and "response_format" not in sent
