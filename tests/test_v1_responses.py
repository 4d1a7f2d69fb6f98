"""POST /v1/responses through the official `openai` package: whole and streamed, instructions, function tools
and their outputs, previous_response_id, structured output (responses.parse), the stored responses (GET and
DELETE, per user), an account type that answers text only, and the ledger."""

from __future__ import annotations

import openai
import pytest
from fakes import FakeOpenAI
from pydantic import BaseModel
from upstream_fixtures import openai_account

TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture
def fake():
    with FakeOpenAI() as upstream:
        yield upstream


@pytest.fixture
def setup(make_server, admin, fake, request):
    """A server with an openai account (on the fake) and the demo; a user's SDK client. On PostgreSQL too
    for the tests that ask for `database` (tests/pg.py)."""
    database = request.getfixturevalue("database") if "database" in request.fixturenames else {}
    server = make_server([openai_account(fake), {"name": "demo", "type": "demo"}], **database)
    key = server.create_user(admin, "rita")["api_key"]
    return server, openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0), key


def last_sent(fake) -> dict:
    return fake.chats()[-1]["body"]


def test_a_whole_response_with_instructions_and_a_follow_up(setup, fake, database):
    """instructions go first as a system message; previous_response_id brings the earlier turn (not its
    instructions) and its answer along."""
    _server, client, _key = setup
    first = client.responses.create(model="gpt-4o-mini", input="Say hi", instructions="Be brief")
    assert first.id.startswith("resp_") and first.status == "completed" and first.object == "response"
    assert first.output_text == "echo: Say hi"
    assert first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens > 0
    assert last_sent(fake)["messages"] == [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Say hi"},
    ]
    second = client.responses.create(model="gpt-4o-mini", input="And more", previous_response_id=first.id)
    assert second.output_text == "echo: And more" and second.previous_response_id == first.id
    assert last_sent(fake)["messages"] == [
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "echo: Say hi"},
        {"role": "user", "content": "And more"},
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_function_tool_round_trip(setup, fake, stream):
    """A function tool comes back as a function_call item (its arguments streamed as deltas); its output sent
    with previous_response_id reaches the upstream as a tool message after the assistant's tool call."""
    _server, client, _key = setup
    if stream:
        with client.responses.stream(model="gpt-4o-mini", input="Weather in Paris?", tools=TOOLS) as events:
            deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
            response = events.get_final_response()
        assert deltas == '{"city": "x"}'
    else:
        response = client.responses.create(model="gpt-4o-mini", input="Weather in Paris?", tools=TOOLS)
    (call,) = [item for item in response.output if item.type == "function_call"]
    assert (call.name, call.arguments, call.status) == ("get_weather", '{"city": "x"}', "completed")
    assert last_sent(fake)["tools"] == [
        {"type": "function", "function": {k: v for k, v in TOOLS[0].items() if k != "type"}}
    ]
    output = [{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}]
    answer = client.responses.create(model="gpt-4o-mini", input=output, previous_response_id=response.id, tools=TOOLS)
    assert answer.output_text == "tool result: sunny, 21 C"
    sent = last_sent(fake)["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == call.call_id and sent[-2]["role"] == "assistant"
    assert sent[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21 C"}


def test_the_stream_has_the_typed_events_in_order(setup):
    """created, in_progress, the message item and its part, text deltas, their ends, completed; numbered."""
    _server, client, _key = setup
    with client.responses.stream(model="gpt-4o-mini", input="stream please") as events:
        seen = list(events)
        final = events.get_final_response()
    kinds = [e.type for e in seen]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert kinds[-1] == "response.completed" and "response.output_text.delta" in kinds
    assert [e.sequence_number for e in seen] == list(range(len(seen)))
    assert "".join(e.delta for e in seen if e.type == "response.output_text.delta") == "echo: stream please"
    assert final.output_text == "echo: stream please"


def test_structured_output_parses_into_the_model(setup, fake):
    """text.format json_schema (responses.parse) goes up as response_format json_schema; the answer parses."""
    _server, client, _key = setup
    parsed = client.responses.parse(model="gpt-4o-mini", input="Who?", text_format=Person)
    assert isinstance(parsed.output_parsed, Person)
    assert last_sent(fake)["response_format"]["type"] == "json_schema"
    assert last_sent(fake)["response_format"]["json_schema"]["name"] == "Person"


def test_stored_responses_are_per_user_and_can_be_deleted(setup, make_server, admin, database):
    """GET finds one's own response; another user gets 404; DELETE removes it; store false keeps nothing."""
    server, client, _key = setup
    response = client.responses.create(model="gpt-4o-mini", input="keep me")
    assert client.responses.retrieve(response.id).output_text == "echo: keep me"
    other = openai.OpenAI(
        base_url=server.url + "/v1", api_key=server.create_user(admin, "sam")["api_key"], max_retries=0
    )
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="gpt-4o-mini", input="x", previous_response_id=response.id)
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    unkept = client.responses.create(model="gpt-4o-mini", input="forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unkept.id)


def test_a_text_only_account_answers_and_cannot_take_tools(setup):
    """The demo account answers a plain response; tools for its model are a 400 naming tools."""
    _server, client, _key = setup
    assert client.responses.create(model="demo", input="hello demo").output_text.startswith("[demo account]")
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="demo", input="weather?", tools=TOOLS)
    assert refused.value.param == "tools"


def test_bad_requests_are_400s_naming_the_parameter(setup):
    _server, client, _key = setup
    for kwargs, param in (
        ({"input": []}, "input"),
        ({"input": [{"type": "mystery"}]}, "input"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools"),
        ({"input": "x", "instructions": 5}, "instructions"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model="gpt-4o-mini", **kwargs)
        assert refused.value.param == param, kwargs


def test_responses_are_in_the_ledger(setup, admin, fake):
    server, client, _key = setup
    client.responses.create(model="gpt-4o-mini", input="count me")
    with client.responses.stream(model="gpt-4o-mini", input="and me") as events:
        list(events)
    totals = server.get("/api/usage", admin).json()["totals"]
    assert totals["requests"] == 2 and totals["estimated"] == 0
    sent = [fake.usage(r["body"], "") for r in fake.chats()]
    assert totals["prompt_tokens"] == sum(u["prompt_tokens"] for u in sent)


# -- an upstream that offers /responses itself ----------------------------------------------------


@pytest.fixture
def native(make_server, admin, fake):
    """A server whose only account's upstream offers /responses (`responses: true`)."""
    fake.offers_responses = True
    server = make_server([{**openai_account(fake), "responses": True}])
    key = server.create_user(admin, "nora")["api_key"]
    return server, openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0), key


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_upstream_offering_responses_gets_the_request_as_it_is(native, fake, stream):
    """The request goes to the upstream's /responses as sent (model mapped to the account's), nothing to
    /chat/completions; the answer comes back as the upstream gave it (its id, its events in order); the
    response is kept here, so previous_response_id works: the upstream gets the earlier turn spelled out as
    input items (it keeps nothing), and the function call's output follows it."""
    server, client, _key = native
    if stream:
        with client.responses.stream(model="gpt-4o-mini", input="Weather in Paris?", tools=TOOLS) as events:
            kinds = [e.type for e in events]
            first = events.get_final_response()
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        assert "response.function_call_arguments.delta" in kinds
    else:
        first = client.responses.create(model="gpt-4o-mini", input="Weather in Paris?", tools=TOOLS)
    assert fake.chats() == [] and len(fake.responses_requests()) == 1
    sent = fake.responses_requests()[0]["body"]
    assert sent["input"] == "Weather in Paris?" and sent["tools"] == TOOLS and sent["model"] == "gpt-4o-mini"
    assert sent.get("stream", False) is stream
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather"
    kept = client.responses.retrieve(first.id)
    assert kept.id == first.id and kept.output[0].call_id == call.call_id
    output = [{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
    second = client.responses.create(model="gpt-4o-mini", input=output, previous_response_id=first.id, tools=TOOLS)
    assert second.output_text == "tool result: sunny"
    again = fake.responses_requests()[-1]["body"]
    assert "previous_response_id" not in again
    assert again["input"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": "get_weather", "arguments": call.arguments},
        *output,
    ]
    usage = server.get("/api/usage", _key, params={"group_by": "model"}).json()
    assert usage["totals"]["requests"] == 2 and usage["totals"]["completion_tokens"] > 0, usage


def test_an_account_without_responses_still_gets_chat_completions(setup, fake):
    """Without `responses: true` the upstream's /responses is never tried, even if it offers one."""
    _server, client, _key = setup
    fake.offers_responses = True
    assert client.responses.create(model="gpt-4o-mini", input="plain").output_text == "echo: plain"
    assert fake.responses_requests() == [] and len(fake.chats()) == 1


def test_responses_is_refused_on_account_types_other_than_openai(make_server, admin, fake):
    """`responses: true` on a demo account is a settings error naming the field; through the API a 400."""
    server = make_server([openai_account(fake)], from_file=True)
    bad = server.post("/api/accounts", admin, json={"name": "d2", "type": "demo", "responses": True})
    assert bad.status_code == 400 and "responses" in bad.json()["message"], bad.text
    good = server.post("/api/accounts", admin, json={**openai_account(fake, name="oa-r"), "responses": True})
    assert good.status_code == 201 and good.json()["responses"] is True, good.text
