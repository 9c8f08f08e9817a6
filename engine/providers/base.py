"""The small interfaces every speech and language provider implements.

Providers are *blocking* objects: they are called from pykka actor threads (or
from a thread that a trio actor borrows through its own ``CapacityLimiter``),
never from the trio thread itself. That is the measured split (docs/architecture.md): vendor
SDKs stream on their own threads, the 20 ms path stays on trio.

One provider object exists per process and role (one shared Google client, one
loaded whisper model). Per-call state lives in a session or conversation that
the provider opens.

Audio conventions (no resampling anywhere for telephony):
- STT input: 8 kHz mono PCM16 little-endian ``bytes``.
- TTS output: 8 kHz μ-law ``bytes`` (no WAV header), any chunk size.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Protocol, Sequence, runtime_checkable

from engine.messages import CancelToken, EndCall, LeadCaptured, TextDelta, Transcript

PlannerEvent = TextDelta | LeadCaptured | EndCall


class ProviderError(Exception):
    """A provider failed in a way its supervisor should treat as a crash."""


@runtime_checkable
class SttSession(Protocol):
    """One recognition session for one call.

    Results and failures are reported through the callbacks given at open; they
    may be invoked from any thread (a gRPC reader thread, the caller's thread).
    ``on_error`` is called at most once; after it the session is dead and its
    owner restarts it.
    """

    def push_audio(self, pcm16: bytes) -> None:
        """Feed a 40-100 ms batch. Must not block for long (queue it)."""

    def end_utterance(self) -> None:
        """The VAD says the caller stopped. Batch recognizers transcribe here."""

    def close(self) -> None:
        """Release the session. Idempotent; never raises."""


@runtime_checkable
class SpeechToText(Protocol):
    name: str
    streaming: bool  # True when sessions emit interim (partial) results

    def open_session(
        self,
        *,
        language: str,
        sample_rate: int,
        phrase_hints: Sequence[str],
        on_transcript: Callable[[Transcript], None],
        on_error: Callable[[BaseException], None],
    ) -> SttSession: ...


@runtime_checkable
class TextToSpeech(Protocol):
    name: str

    def synthesize(
        self, text: str, *, language: str, voice: str = "", cancel: CancelToken | None = None
    ) -> Iterator[bytes]:
        """Yield 8 kHz μ-law audio for ``text``; stop early when ``cancel`` is set."""
        ...


@runtime_checkable
class Conversation(Protocol):
    """One conversation (a call or a chat) with a language planner."""

    def reply(self, user_text: str, *, cancel: CancelToken) -> Iterator[PlannerEvent]:
        """Stream the agent's answer to one user turn, given the committed history.

        Yields ``TextDelta`` pieces (any granularity), and ``LeadCaptured`` /
        ``EndCall`` when they happen. Never raises for provider trouble: on a
        timeout or error it yields a template reply that asks one narrowing
        question. Stops early when ``cancel`` is set.

        Does NOT change the history: a reply may be speculative (started on a
        partial transcript and thrown away) or interrupted. The owner calls
        ``commit`` with what the user really said and what was really spoken.
        Lead state the planner extracted is kept only through ``commit`` too.
        """
        ...

    def commit(self, user_text: str, agent_text: str, *, interrupted: bool = False) -> None:
        """Append one finished turn to the history (``agent_text`` as heard)."""
        ...

    def summary(self) -> str:
        """A short summary of the conversation so far (may be blocking)."""
        ...


@runtime_checkable
class LanguagePlanner(Protocol):
    name: str

    def open_conversation(
        self,
        business: "Business",
        *,
        channel: str,
        history: Iterable[tuple[str, str]] = (),
    ) -> Conversation:
        """``channel`` is "call" or "chat"; ``history`` is (role, text) pairs, oldest first."""
        ...


# Imported late to keep this module free of cycles; ``Business`` is a plain dataclass.
from engine.business import Business  # noqa: E402
