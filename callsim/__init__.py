"""The simulated Twilio caller and the load generator, apart from the engine.

It speaks the wire protocol (``transports.twilio``, ``transports.signature``) and
uses the G.711 codec (``engine.audio``), nothing else of the product, so it can
drive any host that speaks Twilio Media Streams. Parts: the script model
(:mod:`callsim.script`), the client WebSocket stack (:mod:`callsim.websocket`),
playback (:mod:`callsim.playback`), the caller (:mod:`callsim.caller`), the
timeline printer (:mod:`callsim.timeline`), espeak-ng speech
(:mod:`callsim.voice`), the load generator (:mod:`callsim.loadgen`) and the
``callengine call`` command (:mod:`callsim.commands`).
"""

from callsim.caller import SimulatedCaller
from callsim.script import (
    BargeIn,
    CallResult,
    Pause,
    PressKey,
    Say,
    Step,
    Turn,
    WaitForReply,
    new_call_sid,
    new_stream_sid,
)
from callsim.timeline import render_timeline

__all__ = [
    "BargeIn",
    "CallResult",
    "Pause",
    "PressKey",
    "Say",
    "SimulatedCaller",
    "Step",
    "Turn",
    "WaitForReply",
    "new_call_sid",
    "new_stream_sid",
    "render_timeline",
]
