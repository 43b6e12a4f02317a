"""The messages alone: one encoder, one decoder, and what the decoder refuses."""

from __future__ import annotations

import json
import re

import pytest

from nexus_dataflow_plugin import protocol as proto

EXAMPLES = [
    proto.Init(("/p", "/lib"), ("/lib",), "/p", {"CSVReaderNode": "kailash.nodes.data"}, None,
               60, 1000),
    proto.RunFile(3, "/p/workflows/a.py", "a", ("build",), (), 8.0, "ab" * 32),
    proto.Ready(12),
    proto.Exited(3, None, 9),
    proto.Started(13),
    proto.Result(workflows=(proto.WorkflowData("workflow", {"nodes": {}}, {}, ()),),
                 failures=("f() raised",)),
    proto.Result(guarded=proto.Guarded("skipped_model", "db = DataFlow() at line 3")),
    proto.ReadAhead(-1),
    proto.ReadFiles((proto.ReadItem("/p/workflows/a.py", "workflows/a.py", "a"),), 32768, 2000,
                    1 << 24, "/p"),
    proto.Reading(0, "ab" * 32, [None, None, [], [], ["build"]], '{"names":[]}'),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_survives_the_trip(message: object) -> None:
    assert proto.decode(proto.encode(message)) == message


@pytest.mark.parametrize("raw,problem", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"type": "Nope"}', "expected a message"),
    (b'{"type": [1]}', "expected a message"),
    (b'{"type": {}}', "expected a message"),
    (b'{"type": "Result", "failures": 5}', "Result.failures: expected a list"),
    (b'{"type": "Result", "failures": [1]}', "Result.failures[]: expected str"),
    (b'{"type": "Result", "surprise": 1}', "unknown field(s) surprise"),
    (b'{"type": "Started"}', "missing field pid"),
    (b'{"type": "Started", "pid": true}', "expected int"),
    (b'{"type": "Result", "workflows": [{"attr": "w", "data": 3, "node_modules": {},'
     b' "problems": []}]}', "data: expected an object"),
    (b'{"type": "Result", "failures": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "levels deep"),
    (b'{"type": "Result", "failures": ["\\ud800"]}', "not valid Unicode"),
    (b'{"type": "Result", "workflows": [{"attr": "w", "node_modules": {}, "problems": [],'
     b' "data": {"nodes": {"\\udfff": {}}}}]}', "not valid Unicode"),
    # Lone surrogates by every route: an upper-case escape, in a key of Any data, a
    # surrogate's own UTF-8 bytes (``json`` passes them), and UTF-16 text whose escapes
    # no search of its bytes sees (messages are UTF-8: it is not JSON here).
    (b'{"type": "Result", "failures": ["ok \\uDBFF"]}', "not valid Unicode"),
    (b'{"type": "Reading", "index": 0, "digest": "d", "facts": [{"\\udc00": 1}]}',
     "not valid Unicode"),
    (b'{"type": "Result", "failures": ["\xed\xa0\x80"]}', "not JSON"),
    (b'{"type": "Result", "workflows": [{"attr": "w", "data": null, "problems": [],'
     b' "node_modules": {"\\ud800": "m"}}]}', "not valid Unicode"),
    ('{"type": "Result", "failures": ["\\ud800"]}'.encode("utf-16-le"), "not JSON"),
    (b'{"type": "Result", "workflows": [{"attr": "../../etc", "data": null, "node_modules": {},'
     b' "problems": []}]}', "is not a Python name"),
])
def test_the_decoder_refuses_what_the_protocol_does_not_allow(raw: bytes, problem: str) -> None:
    with pytest.raises(proto.ProtocolError, match=re.escape(problem)):
        proto.decode(raw)


def test_a_surrogate_pair_and_an_escaped_backslash_are_text() -> None:
    raw = b'{"type": "Result", "failures": ["\\ud83d\\ude00", "\\\\ud800"]}'
    assert proto.decode(raw) == proto.Result(failures=("\U0001f600", "\\ud800"))


def test_nesting_inside_workflow_data_is_bounded_too() -> None:
    deep: object = "leaf"
    for _ in range(proto.MAX_DEPTH + 5):
        deep = {"k": deep}
    data = {"nodes": {"n": {"node_type": "X", "config": deep}}}
    raw = json.dumps({"type": "Result", "workflows": [
        {"attr": "w", "data": data, "node_modules": {}, "problems": []}]}).encode()
    with pytest.raises(proto.ProtocolError, match="levels deep"):
        proto.decode(raw)


def test_a_message_of_the_wrong_kind_for_its_channel_is_refused() -> None:
    with pytest.raises(proto.ProtocolError, match="expected Started"):
        proto.decode(proto.encode(proto.Ready(1)), proto.Started)


def test_frames_split_anywhere_come_out_whole_and_an_oversize_one_is_refused_unread() -> None:
    stream = proto.frame(proto.FRAME_STARTED, proto.Started(7)) + proto.frame(
        proto.FRAME_RESULT, proto.Result())
    reader = proto.FrameReader(limit=1000)
    frames = [f for byte in stream for f in reader.feed(bytes([byte]))]
    assert [proto.decode(body) for _, body in frames] == [proto.Started(7), proto.Result()]
    readings = [proto.Reading(i, "0" * 64, []) for i in range(50)]  # many to one read
    together = b"".join(proto.frame(proto.FRAME_READING, m) for m in readings)
    reader = proto.FrameReader(limit=1000)
    frames = reader.feed(together[:-3]) + reader.feed(together[-3:])
    assert [proto.decode(body) for _, body in frames] == readings
    assert not reader.buffer
    with pytest.raises(proto.OversizeFrame) as refused:
        proto.FrameReader(limit=10).feed(proto.FRAME_HEADER.pack(proto.FRAME_RESULT, 11))
    assert refused.value.size == 11
    with pytest.raises(proto.ProtocolError, match="unknown frame kind"):
        proto.FrameReader(limit=10).feed(proto.FRAME_HEADER.pack(9, 1))


def test_node_count_sums_every_workflow_of_a_result() -> None:
    result = proto.Result(workflows=(
        proto.WorkflowData("a", {"nodes": {"x": {}, "y": {}}}, {}, ()),
        proto.WorkflowData("b", None, {}, ("cannot travel",)),
        proto.WorkflowData("c", {"nodes": {"z": {}}}, {}, ()),
    ))
    assert proto.node_count(result) == 3
    wired = proto.WorkflowData("d", {"nodes": {"x": {}}, "connections": [{}, {}]}, {}, ())
    assert proto.node_count(proto.Result(workflows=(wired,))) == 3  # connections count
