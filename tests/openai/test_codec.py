"""The OpenAI codec without a server: request mapping, chunk encoding, error shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmbrick import ChatRequest, FlowRuntime, InvalidRequest
from llmbrick.context import Headers
from llmbrick_sse import OpenAICodec, Rejected
from llmbrick_sse.openai_response import ChunkWriter, completion, error_object, status_for
from tests.openai.flows import Flows, user

CODEC = OpenAICodec()


@pytest.fixture
def runtime() -> FlowRuntime:
    flows = Flows()

    @flows.registry.flow("studio", capabilities=["audio", "files"])
    async def studio(request: ChatRequest) -> Any:
        yield {"type": "text", "text": "ok"}

    return FlowRuntime(flows.registry)


def read(runtime: FlowRuntime, **body: Any) -> dict[str, Any]:
    """The ChatRequest payload for ``body`` (model ``inspect`` unless given), validated."""
    body.setdefault("model", "inspect")
    body.setdefault("messages", user("x"))
    opening = CODEC.open(body, Headers(), runtime)
    spec = runtime.registry.get(opening.flow or "")
    runtime.validate(spec, opening.payload)  # what the runtime will accept
    payload: dict[str, Any] = opening.payload
    return payload


def refused(runtime: FlowRuntime, **body: Any) -> tuple[int, dict[str, Any]]:
    """The status and OpenAI error object of a body the codec refuses."""
    body.setdefault("model", "inspect")
    body.setdefault("messages", user("x"))
    with pytest.raises(Rejected) as caught:
        CODEC.open(body, Headers(), runtime)
    status = caught.value.status
    return status, json.loads(CODEC.error_body(caught.value.error, status))["error"]


# --- requests -----------------------------------------------------------------------------


def test_the_opening_names_the_flow_and_keeps_the_requested_model(runtime: FlowRuntime) -> None:
    body = {"model": "gpt-4o-mini", "messages": user("hi"), "stream": True}
    opening = CODEC.open(body, Headers(), runtime)
    assert (opening.flow, opening.streaming) == ("default", True)
    assert opening.options == {"model": "gpt-4o-mini", "include_usage": False}
    assert opening.payload == {"model": "gpt-4o-mini", "messages": user("hi"), "stream": True}


def test_stream_defaults_to_false_and_include_usage_is_read(runtime: FlowRuntime) -> None:
    assert read(runtime)["stream"] is False
    body = {"model": "default", "messages": user("x"), "stream": True}
    opening = CODEC.open({**body, "stream_options": {"include_usage": True}}, Headers(), runtime)
    assert opening.options["include_usage"] is True


def test_messages_are_mapped_role_by_role(runtime: FlowRuntime) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "rule"}]},
        {"role": "system", "content": "sys", "name": "ops"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "42"}]},
        {"role": "assistant", "refusal": "I cannot help with that."},
        # Fields of another server's answer, sent back as null, are "not set".
        {"role": "assistant", "content": "fine", "annotations": None, "audio": None},
    ]
    assert read(runtime, messages=messages)["messages"] == [
        {"role": "system", "content": "rule"},
        {"role": "system", "content": "sys", "name": "ops"},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "assistant", "content": "I cannot help with that."},
        {"role": "assistant", "content": "fine"},
    ]


def test_fields_go_to_the_chat_request_or_to_options(runtime: FlowRuntime) -> None:
    payload = read(
        runtime,
        temperature=0.2,
        top_p=0.5,
        stop="END",
        seed=1,
        user="u",
        tools=[{"type": "function", "function": {"name": "f"}}],
        tool_choice="auto",
        response_format={"type": "text"},
        metadata={"a": "b"},
        max_tokens=10,
        max_completion_tokens=20,
        n=1,
        stream_options=None,
        logprobs=False,
        presence_penalty=None,  # null: not set
        prediction={"type": "content", "content": "x"},
        web_search_options={},
        functions=[{"name": "legacy"}],
    )
    assert payload["max_tokens"] == 20  # max_completion_tokens wins: it is the current name
    assert {key: payload[key] for key in ("temperature", "top_p", "stop", "seed", "user")} == {
        "temperature": 0.2,
        "top_p": 0.5,
        "stop": "END",
        "seed": 1,
        "user": "u",
    }
    assert payload["tool_choice"] == "auto" and payload["metadata"] == {"a": "b"}
    assert payload["options"] == {
        "logprobs": False,
        "prediction": {"type": "content", "content": "x"},
        "web_search_options": {},
        "functions": [{"name": "legacy"}],
    }


def test_rich_content_reaches_only_a_flow_with_the_capability(runtime: FlowRuntime) -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    document = {"type": "file", "file": {"file_id": "f1"}}
    content = [{"type": "text", "text": "listen"}, audio, document]
    (message,) = read(runtime, model="studio", messages=[{"role": "user", "content": content}])[
        "messages"
    ]
    assert message == {"role": "user", "content": "listen", "parts": content}
    answer = {"role": "assistant", "audio": {"id": "audio_1"}}
    messages = [*user("x"), answer, *user("again")]
    assert read(runtime, model="studio", messages=messages, modalities=["text", "audio"])[
        "messages"
    ][1] == {
        "role": "assistant",
        "content": "",
        "parts": [{"type": "audio", "audio": {"id": "audio_1"}}],
    }


@pytest.mark.parametrize(
    ("body", "param", "code", "words"),
    [
        ({"frobnicate": 1}, "frobnicate", "unknown_parameter", "Unrecognized request argument"),
        ({"model": None}, "model", "INVALID_ARGUMENT", "you must provide a model"),
        ({"model": 7}, "model", "INVALID_ARGUMENT", "non-empty string"),
        ({"messages": None}, "messages", "INVALID_ARGUMENT", "messages is required"),
        ({"messages": "hi"}, "messages", "INVALID_ARGUMENT", "must be a list"),
        ({"n": 3}, "n", "unsupported_value", "n=3 is not supported"),
        ({"n": "1"}, "n", "INVALID_ARGUMENT", "n must be an integer"),
        ({"stream": "yes"}, "stream", "INVALID_ARGUMENT", "stream must be a boolean"),
        ({"stream_options": []}, "stream_options", "INVALID_ARGUMENT", "must be an object"),
        ({"max_tokens": 0}, "max_tokens", "INVALID_ARGUMENT", "positive integer"),
        ({"logprobs": True}, "logprobs", "unsupported_value", "'logprobs' capability"),
        ({"modalities": ["audio"]}, "modalities", "unsupported_value", "'audio' capability"),
        ({"audio": {"voice": "alloy"}}, "audio", "unsupported_value", "'audio' capability"),
        ({"model": "sum"}, "model", "INVALID_ARGUMENT", "does not take chat requests"),
        (
            {"messages": [{"role": "user", "content": "x", "parts": []}]},
            "messages[0].parts",
            "unknown_parameter",
            "Unrecognized argument supplied in messages[0]: parts",
        ),
        (
            {"messages": [{"role": "function", "name": "f", "content": "x"}]},
            "messages[0].role",
            "INVALID_ARGUMENT",
            "deprecated",
        ),
        (
            {"messages": [{"role": "assistant", "function_call": {"name": "f"}}]},
            "messages[0].function_call",
            "INVALID_ARGUMENT",
            "use tool_calls",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]},
            "messages[0].content[0].type",
            "INVALID_ARGUMENT",
            "'video' is not one of",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
            "messages[0].content[0].text",
            "INVALID_ARGUMENT",
            "a text part needs a string",
        ),
        (
            {"messages": [{"role": "assistant", "audio": {"id": "a"}}]},
            "messages[0].audio",
            "unsupported_value",
            "'audio' capability",
        ),
    ],
)
def test_what_gives_400(
    runtime: FlowRuntime, body: dict[str, Any], param: str, code: str, words: str
) -> None:
    status, error = refused(runtime, **body)
    assert status == 400
    assert (error["param"], error["code"], error["type"]) == (
        param,
        code,
        "invalid_request_error",
    )
    assert words in error["message"]


def test_a_body_that_is_not_an_object_is_400(runtime: FlowRuntime) -> None:
    with pytest.raises(Rejected) as caught:
        CODEC.open([1, 2], Headers(), runtime)
    assert caught.value.status == 400
    assert "JSON object" in caught.value.error["message"]


def test_an_unknown_model_is_404_model_not_found(runtime: FlowRuntime) -> None:
    status, error = refused(runtime, model="gpt-9")
    assert (status, error["code"], error["param"]) == (404, "model_not_found", "model")


def test_a_schema_violation_names_the_field_as_openai_writes_paths(runtime: FlowRuntime) -> None:
    spec = runtime.registry.get("inspect")
    body = {"model": "inspect", "messages": [{"role": "user", "content": "x", "name": 5}]}
    payload = CODEC.open(body, Headers(), runtime).payload
    with pytest.raises(InvalidRequest) as caught:
        runtime.validate(spec, payload)
    info = caught.value.to_info()
    error = json.loads(CODEC.error_body(info, CODEC.status_for(info)))["error"]
    assert CODEC.status_for(info) == 400
    assert error["param"] == "messages[0].name"


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("INVALID_ARGUMENT", 400, "invalid_request_error"),
        ("FAILED_PRECONDITION", 400, "invalid_request_error"),
        ("UNAUTHENTICATED", 401, "authentication_error"),
        ("PERMISSION_DENIED", 403, "permission_error"),
        ("NOT_FOUND", 404, "invalid_request_error"),
        ("RESOURCE_EXHAUSTED", 429, "rate_limit_error"),
        ("INTERNAL", 500, "server_error"),
        ("UNAVAILABLE", 503, "server_error"),
        ("DEADLINE_EXCEEDED", 504, "server_error"),
        ("SOMETHING_NEW", 500, "server_error"),
    ],
)
def test_each_code_has_openais_status_and_type(code: str, status: int, kind: str) -> None:
    error = {"code": code, "message": "m"}
    assert status_for(error) == status
    assert error_object(error, status) == {
        "message": "m",
        "type": kind,
        "param": None,
        "code": code,
    }


def test_a_guard_rejection_is_not_an_http_error() -> None:
    guard = {"code": "PERMISSION_DENIED", "message": "no", "details": {"guard": "g"}}
    assert status_for(guard) == 200
    assert status_for({"code": "PERMISSION_DENIED", "message": "no"}) == 403


def test_mid_stream_errors_keep_the_neutral_code() -> None:
    error = {"code": "NOT_FOUND", "message": "m", "details": {"apiCode": "model_not_found"}}
    assert error_object(error, 404)["code"] == "model_not_found"
    assert error_object(error, 404, neutral_code=True)["code"] == "NOT_FOUND"


# --- streamed answers ---------------------------------------------------------------------

HEAD = '{"id":"chatcmpl-s1","object":"chat.completion.chunk","created":1700000000,"model":"m"'


def writer(include_usage: bool = False) -> ChunkWriter:
    return ChunkWriter("chatcmpl-s1", "m", include_usage, created=1700000000)


def frames(data: bytes) -> list[Any]:
    """The JSON of each ``data:`` frame (``[DONE]`` as the string)."""
    out = []
    for frame in data.decode().split("\n\n"):
        if frame:
            assert frame.startswith("data: ")
            body = frame.removeprefix("data: ")
            out.append(body if body == "[DONE]" else json.loads(body))
    return out


def test_text_chunks_are_byte_exact_with_the_role_on_the_first() -> None:
    w = writer()
    first = w.encode({"type": "text", "text": "Hel", "id": "1", "progress": "IN_PROGRESS"})
    second = w.encode({"type": "text", "text": "lo", "id": "2", "progress": "IN_PROGRESS"})
    assert (
        first
        == (
            f'data: {HEAD},"choices":[{{"index":0,"delta":{{"role":"assistant","content":"Hel"}},'
            '"logprobs":null,"finish_reason":null}]}\n\n'
        ).encode()
    )
    assert (
        second
        == (
            f'data: {HEAD},"choices":[{{"index":0,"delta":{{"content":"lo"}},'
            '"logprobs":null,"finish_reason":null}]}\n\n'
        ).encode()
    )
    done = frames(w.encode({"type": "done", "id": "3", "progress": "DONE"}))
    assert [f["choices"][0]["finish_reason"] for f in done] == ["stop"]
    assert done[0]["choices"][0]["delta"] == {}
    assert w.close() == b"data: [DONE]\n\n"


def test_tool_calls_are_indexed_and_finish_with_tool_calls() -> None:
    w = writer(include_usage=True)
    a = frames(w.encode({"type": "tool_call", "data": {"id": "x", "name": "f", "arguments": ""}}))
    b = frames(w.encode({"type": "tool_call", "data": {"name": "g", "arguments": {"k": 1}}}))
    assert a[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "tool_calls": [
            {"index": 0, "id": "x", "type": "function", "function": {"name": "f", "arguments": ""}}
        ],
    }
    assert b[0]["choices"][0]["delta"]["tool_calls"] == [
        {
            "index": 1,
            "id": "call_chatcmpl-s1_1",
            "type": "function",
            "function": {"name": "g", "arguments": '{"k":1}'},
        }
    ]
    finish, usage = frames(w.encode({"type": "done"}))
    assert finish["choices"][0]["finish_reason"] == "tool_calls"
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_other_events_ride_on_an_empty_delta_and_meta_sets_finish_and_usage() -> None:
    w = writer(include_usage=True)
    w.encode({"type": "text", "text": "a"})
    usage = {"promptTokens": 3, "completionTokens": 1, "totalTokens": 4}
    meta = {"type": "meta", "metadata": {"finishReason": "length", "usage": usage}}
    custom = {"type": "citation", "data": {"n": 1}}
    (chunk,) = frames(w.encode(meta))
    assert chunk["choices"][0]["delta"] == {}
    assert chunk["llmbrick"] == {"events": [meta]}
    assert frames(w.encode(custom))[0]["llmbrick"] == {"events": [custom]}
    finish, totals = frames(w.encode({"type": "done"}))
    assert finish["choices"][0]["finish_reason"] == "length"
    assert totals["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}


def test_a_guard_rejection_is_a_content_filter_finish_then_done() -> None:
    w = writer()
    error = {
        "type": "error",
        "error": {"code": "PERMISSION_DENIED", "message": "no", "details": {"guard": "g"}},
    }
    (chunk,) = frames(w.encode(error))
    assert chunk["choices"][0]["finish_reason"] == "content_filter"
    assert chunk["choices"][0]["delta"] == {"role": "assistant"}
    assert chunk["llmbrick"] == {"events": [error]}
    assert w.close() == b"data: [DONE]\n\n"


def test_an_error_is_one_error_frame_and_no_done() -> None:
    w = writer(include_usage=True)
    w.encode({"type": "text", "text": "a"})
    data = w.encode({"type": "error", "error": {"code": "INTERNAL", "message": "boom"}})
    assert frames(data) == [
        {"error": {"message": "boom", "type": "server_error", "param": None, "code": "INTERNAL"}}
    ]
    assert w.close() == b""


# --- whole answers ------------------------------------------------------------------------


def test_a_completion_joins_text_and_carries_tool_calls_usage_and_events() -> None:
    events: list[Any] = [
        {"type": "text", "text": "a", "logprobs": {"content": [{"token": "a", "logprob": -1}]}},
        {"type": "text", "text": "b", "logprobs": {"content": [{"token": "b", "logprob": -2}]}},
        {"type": "data", "data": {"x": 1}},
        {"type": "tool_call", "data": {"id": "t", "name": "f", "arguments": "{}"}},
        {"type": "done"},
    ]
    answer = completion(events, "chatcmpl-s1", "m", created=1)
    assert answer == {
        "id": "chatcmpl-s1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "ab",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "t",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                "logprobs": {
                    "content": [{"token": "a", "logprob": -1}, {"token": "b", "logprob": -2}],
                    "refusal": None,
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 2, "total_tokens": 2},
        "llmbrick": {"events": [{"type": "data", "data": {"x": 1}}]},
    }


def test_an_empty_answer_has_empty_content_and_no_extension() -> None:
    answer = completion([{"type": "done"}], "chatcmpl-s1", "m", created=1)
    assert answer["choices"][0]["message"]["content"] == ""
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert "llmbrick" not in answer
