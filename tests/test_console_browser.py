"""The operator console in a real headless Chromium, against a real host.

Debian's ``chromium`` (installed by ``scripts/ensure-system.sh test``) is driven
by playwright through ``executable_path``; playwright's own browser download is
never used. The page runs under its real Content-Security-Policy, so the tests
wait on elements (locators), never on evaluated script strings.

- without the token the console shows the gate and reads nothing; a wrong token
  is refused;
- during a simulated phone call (``callengine call``) the call appears live on
  its own with its actor tree, its turn's waterfall follows; Restart on an
  actor shows in the tree, and End call ends it (the list says so by itself);
- a test call from the browser: Chromium's fake capture plays a WAV made with
  espeak-ng ("When are you open?") into the microphone, the console sends it as
  Twilio media, plays the agent's audio back and shows the transcript.

Set ``CALLENGINE_CONSOLE_SHOTS=docs/img`` to keep screenshots of the live call
and of the test call (that is how docs/console.md's pictures are made).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import wave
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest_host import ADMIN_TOKEN, TWILIO_TOKEN, HostProcess

playwright = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' brings playwright")
expect = playwright.expect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium: `make test` installs it (scripts/ensure-system.sh test)")

SHOTS = os.environ.get("CALLENGINE_CONSOLE_SHOTS", "")
CALLER_NUMBER = "+15550104242"


def _shot(page: object, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / name), full_page=True)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the fake microphone hears, in a loop (the fake device plays it from
    the moment the page opens the microphone, however long the call then takes
    to connect): a pause, the question, and silence for the agent to answer in."""
    folder = tmp_path_factory.mktemp("wav")
    raw = folder / "raw.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), "When are you open?"], check=True)
    with wave.open(str(raw)) as src:
        rate, speech = src.getframerate(), src.readframes(src.getnframes())
    out = folder / "question.wav"
    with wave.open(str(out), "wb") as dst:
        dst.setnchannels(1)
        dst.setsampwidth(2)
        dst.setframerate(rate)
        dst.writeframes(b"\0\0" * rate * 3 + speech + b"\0\0" * rate * 6)
    return out


@pytest.fixture(scope="module")
def browser(question_wav: Path) -> Iterator[object]:
    with playwright.sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-audio-capture={question_wav}",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})  # type: ignore[attr-defined]
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield pg
    finally:
        context.close()
    assert not errors, f"script errors on the page: {errors}"


def _sign_in(page: object, host: HostProcess, token: str = ADMIN_TOKEN) -> None:
    page.goto(host.http + "/")  # type: ignore[attr-defined]
    page.fill("#token", token)  # type: ignore[attr-defined]
    page.click("#gate-form button[type=submit]")  # type: ignore[attr-defined]


def test_console_refuses_data_without_the_token(page: object, host: HostProcess) -> None:
    admin = []
    page.on("response", lambda r: admin.append((r.url, r.status)) if "/admin/" in r.url else None)
    page.goto(host.http + "/")
    expect(page.locator("#gate")).to_be_visible()
    expect(page.locator("#tabs")).to_be_hidden()
    page.wait_for_timeout(500)
    assert admin == [], "the console read the admin API before it had a token"

    _sign_in(page, host, "not-the-token")
    expect(page.locator("#gate-error")).to_contain_text("refused")
    expect(page.locator("#tabs")).to_be_hidden()
    expect(page.locator("#calls-list")).to_have_count(0)
    assert admin and all(status == 401 for _, status in admin), admin

    page.fill("#token", ADMIN_TOKEN)
    page.click("#gate-form button[type=submit]")
    expect(page.locator("#calls-list")).to_be_visible()
    expect(page.locator("#gate")).to_be_hidden()

    page.click("#signout")  # forgets the token: a reload shows the gate again
    expect(page.locator("#gate")).to_be_visible()
    page.reload()
    expect(page.locator("#gate")).to_be_visible()
    expect(page.locator("#calls-list")).to_have_count(0)


def test_a_live_call_shows_its_tree_and_waterfall_and_obeys_restart_and_end(page: object, host: HostProcess) -> None:
    env = {**os.environ, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN}
    exe = str(Path(sys.executable).parent / "callengine")
    caller = subprocess.Popen(
        [exe, "call", "--url", host.ws, "--say", "I have a leaking pipe in the kitchen", "--pause", "30",
         "--from", CALLER_NUMBER, "--reply-timeout", "60", "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        _sign_in(page, host)
        item = page.locator(f'#calls-list a.item[data-state="live"]:has-text("{CALLER_NUMBER}")')
        expect(item).to_be_visible(timeout=20000)  # it appears without a reload
        item.click()
        detail = page.locator("#call-detail")
        expect(detail.locator(".badge.live")).to_be_visible()
        for role in ("transport", "decoder", "stt", "planner", "tts", "pacer"):
            expect(detail.locator(f'.tree .node[data-role="{role}"]')).to_be_visible()
        expect(detail.locator('.tree .node[data-role="stt"] .dot.ok')).to_be_visible()

        turn = detail.locator('.turn[data-turn="1"]')
        expect(turn.locator(".bubble.caller")).to_contain_text(re.compile("leak|kitchen", re.I), timeout=30000)
        expect(turn.locator(".bubble.agent")).to_be_visible(timeout=20000)
        for stage in ("stt", "llm", "tts", "send"):
            expect(turn.locator(f'.waterfall .wf-row[data-stage="{stage}"] .bar')).to_be_visible(timeout=20000)
        expect(turn.locator(".wf-row.slow")).to_have_count(1)  # exactly one stage is flagged slowest
        _shot(page, "console-live-call.png")

        # Restart one actor through its supervisor: the tree shows it.
        detail.locator('.tree .node[data-role="tts"] button').click()
        expect(detail.locator('.tree .node[data-role="tts"] .restarts')).to_have_attribute("data-restarts", "1", timeout=15000)
        # End the call (the caller would have stayed 30 s more): the list shows it ended on its own.
        end = detail.locator("button.danger")
        end.click()
        end.click()  # the second click confirms
        ended = page.locator(f'#calls-list a.item[data-state="ended"]:has-text("{CALLER_NUMBER}")')
        expect(ended).to_be_visible(timeout=15000)
        caller.communicate(timeout=30)
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()


def test_a_test_call_from_the_browser_microphone(page: object, host: HostProcess) -> None:
    _sign_in(page, host)
    expect(page.locator("#tabs")).to_be_visible()
    page.goto(host.http + "/#/test")
    page.select_option("#testcall-business", "demo")
    page.click("#testcall-start")
    expect(page.locator("#testcall-status")).to_have_attribute("data-state", "live", timeout=15000)

    transcript = page.locator("#testcall-transcript")
    expect(transcript.locator(".bubble.caller").first).to_contain_text("open", ignore_case=True, timeout=60000)
    expect(transcript.locator(".bubble.agent").first).to_be_visible(timeout=20000)
    expect(transcript.locator(".waterfall .wf-row").first).to_be_visible(timeout=20000)
    facts = page.locator(".tc-facts")
    expect(facts).to_have_attribute("data-heard", re.compile(r"^([1-9]\d*\.\d+|0\.[5-9]\d*)$"))  # the agent's audio came back
    _shot(page, "console-test-call.png")

    page.click("#testcall-hangup")
    expect(page.locator("#testcall-status")).to_have_attribute("data-state", "ended")
    assert int(facts.get_attribute("data-sent") or 0) > 100  # 20 ms frames went out all along

    status, listing = host.get("/admin/calls?limit=20")
    assert status == 200
    mine = [c for c in listing["calls"] if c.get("from") == "browser"]
    assert mine, listing
