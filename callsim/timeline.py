"""One simulated call as lines of text, for ``callengine call``."""

from __future__ import annotations

from callsim.script import CallResult

__all__ = ["render_timeline"]


def _ms(value: float | None) -> str:
    return "   -   " if value is None else f"{value:7.0f}"


def render_timeline(result: CallResult) -> str:
    """A human-readable summary of one call for the CLI (times in ms since start)."""
    lines = [
        f"call {result.call_sid}  stream {result.stream_sid}  "
        f"{'ok' if result.ok else 'FAILED'}  {result.duration_ms / 1000:.1f} s",
        f"  greeting first frame {_ms(result.greeting_first_frame_ms)} ms",
    ]
    for turn in result.turns:
        kind = "barge-in" if turn.barge_in else "turn"
        lines.append(
            f"  {kind:8} {turn.index:>2} {turn.label[:40]!r:44} speech {_ms(turn.speech_start_ms)} -> "
            f"{_ms(turn.speech_end_ms)}  reply {_ms(turn.reply_first_frame_ms)}  "
            f"latency {_ms(turn.reply_latency_ms)}"
            + (f"  clear after {turn.clear_ms:.0f} ms" if turn.clear_ms is not None else "")
        )
    violations = ", ".join(f"{k}={v}" for k, v in sorted(result.violations.items())) or "none"
    lines.append(
        f"  agent audio {result.received_seconds:.2f} s received, {result.heard_bytes / 8000:.2f} s heard; "
        f"marks {result.marks_received} received / {len(result.marks_echoed)} echoed; "
        f"clears {len(result.clears_received)}; underruns {result.underruns}; "
        f"frames sent {result.frames_sent} ({result.late_frames} late); violations {violations}"
    )
    if result.closed_by_server:
        lines.append("  the server closed the connection before the caller hung up")
    for error in result.errors:
        lines.append(f"  error: {error}")
    return "\n".join(lines)
