import msgspec
import numpy as np
import pytest

from rig.core.schema import (
    ALL_MESSAGE_TYPES,
    Codec,
    Control,
    FluorFrame,
    GapCounter,
    Heartbeat,
    SchemaError,
    TrialEvent,
)


def _wire(frames):
    """What the receiving socket hands over: bytes per frame."""
    return [f.tobytes() if isinstance(f, np.ndarray) else bytes(f) for f in frames]


def test_fluor_round_trip_keeps_arrays_and_stamps():
    codec = Codec()
    F = np.linspace(0, 1, 500, dtype=np.float32)
    msg = FluorFrame(frame=7, t_ready=10, t_registered=11, t_extracted=12, dy=0.25, dx=-1.5, corr=0.8, flags=0,
                     F=F, Fneu=F * 2, seq=3, sender="acquisition")
    frames = codec.encode(msg)
    assert frames[0] == b"acq.fluor" and len(frames) == 4
    out = codec.decode(_wire(frames))
    assert isinstance(out, FluorFrame)
    assert (out.frame, out.t_ready, out.t_registered, out.t_extracted, out.seq) == (7, 10, 11, 12, 3)
    np.testing.assert_array_equal(out.F, F)
    np.testing.assert_array_equal(out.Fneu, F * 2)
    assert out.F.dtype == np.float32


def test_every_message_type_has_a_unique_topic():
    topics = [cls.topic for cls in ALL_MESSAGE_TYPES]
    assert len(set(topics)) == len(topics)
    # no topic may be a prefix of another, or a subscription would receive both
    for a in topics:
        for b in topics:
            assert a == b or not b.startswith(a), (a, b)


def test_non_contiguous_arrays_are_sent_contiguous():
    codec = Codec()
    F = np.arange(20, dtype=np.float32)[::2]
    msg = FluorFrame(frame=1, t_ready=0, t_registered=0, t_extracted=0, dy=0, dx=0, corr=1, flags=0, F=F, Fneu=F)
    out = codec.decode(_wire(codec.encode(msg)))
    np.testing.assert_array_equal(out.F, F)


@pytest.mark.parametrize("frames, fragment", [
    ([b"sys.hb"], "expected topic \\+ header"),
    ([b"sys.hb", b"\xc1garbage"], "undecodable header"),
    ([b"sys.control", msgspec.msgpack.encode(["hb", 1, 1, "x", "p", "running", 0, 0, {}])], "carries a Heartbeat"),
    ([b"sys.hb", msgspec.msgpack.encode(["hb", 99, 1, "x", "p", "running", 0, 0, {}])], "schema version 99"),
])
def test_bad_messages_raise_schema_error_naming_the_topic(frames, fragment):
    with pytest.raises(SchemaError, match=fragment):
        Codec().decode(frames)


def test_array_payload_missing_is_a_schema_error():
    codec = Codec()
    F = np.zeros(4, np.float32)
    frames = _wire(codec.encode(FluorFrame(frame=1, t_ready=0, t_registered=0, t_extracted=0, dy=0, dx=0, corr=1,
                                           flags=0, F=F, Fneu=F)))
    with pytest.raises(SchemaError, match="bad array payload"):
        codec.decode(frames[:3])


def test_gap_counter_counts_missing_sequence_numbers_per_stream():
    gaps = GapCounter()
    seen = []
    for seq in (1, 2, 5, 6, 9):
        seen.append(gaps.observe(Heartbeat(process="a", state="running", seq=seq, sender="a")))
    # another stream from the same sender is independent
    assert gaps.observe(TrialEvent(kind="hit", trial=1, frame=1, seq=1, sender="a")) == 0
    assert seen == [0, 0, 2, 0, 2]
    assert gaps.gaps == 4
    # a restarted sender (seq back to 1) is not a gap
    assert gaps.observe(Heartbeat(process="a", state="running", seq=1, sender="a")) == 0


def test_control_args_round_trip():
    codec = Codec()
    msg = Control(command="set_ensembles", args={"up": [1, 2], "down": [3]}, issued_by="console")
    out = codec.decode(_wire(codec.encode(msg)))
    assert out.args == {"up": [1, 2], "down": [3]} and out.issued_by == "console"
