"""TwiML answers for the voice webhook, built with the ``twilio`` helper library.

Two answers exist: connect the call to our Media Stream WebSocket (bidirectional
``<Connect><Stream>``, with call context passed as ``<Parameter>``s because the
WebSocket may land in another worker process), or say a short sentence and hang
up (the polite answer when this process is at its concurrent-call limit).

Why the library and not an f-string: it escapes attribute values and text
(``&``, ``"``, ``<`` in URLs, business names and Hebrew sentences) correctly and
names the attributes exactly as Twilio spells them. Pure functions, callable from
any task or thread.
"""

from __future__ import annotations

from typing import Mapping

from twilio.twiml.voice_response import Connect, VoiceResponse

__all__ = ["connect_stream_twiml", "say_and_hangup_twiml"]


def connect_stream_twiml(
    ws_url: str, parameters: Mapping[str, str], status_callback: str | None = None
) -> str:
    """``<Response><Connect><Stream url=..>`` with one ``<Parameter>`` per item.

    ``ws_url`` must be a ``wss://`` (or ``ws://`` for local tests) URL; anything
    else raises ``ValueError`` (Twilio would fail the call with a vague error).
    Parameter names and values are converted to ``str``; ``status_callback``, when
    given, is set with ``statusCallbackMethod="POST"``. Returns the XML document.
    """
    if not isinstance(ws_url, str) or not ws_url.startswith(("wss://", "ws://")):
        raise ValueError(f"stream url must start with wss:// or ws://, got {ws_url!r}")
    response = VoiceResponse()
    connect = Connect()
    stream_kwargs: dict[str, str] = {"url": ws_url}
    if status_callback:
        stream_kwargs["status_callback"] = status_callback
        stream_kwargs["status_callback_method"] = "POST"
    stream = connect.stream(**stream_kwargs)
    for name, value in parameters.items():
        stream.parameter(name=str(name), value=str(value))
    response.append(connect)
    return response.to_xml()


def say_and_hangup_twiml(text: str, language: str) -> str:
    """``<Response><Say language=..>text</Say><Hangup/></Response>``.

    ``language`` is a BCP-47 tag Twilio's ``<Say>`` accepts (e.g. ``he-IL``,
    ``en-US``); an empty ``text`` raises ``ValueError``.
    """
    if not text or not text.strip():
        raise ValueError("say_and_hangup_twiml needs non-empty text")
    response = VoiceResponse()
    if language:
        response.say(text, language=language)
    else:
        response.say(text)
    response.hangup()
    return response.to_xml()
