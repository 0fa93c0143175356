"""`sttgate demo` is the newcomer's first command: it must work offline, as written in the README."""

import json
import subprocess
import sys


def test_demo_streams_every_provider_and_prints_the_bill(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sttgate", "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "demo page http://127.0.0.1:" in out  # the page is off by default, on for the demo's own gateway
    transcripts = out[out.index("transcripts:") : out.index("usage (what the customer is billed):")]
    for provider in ("assemblyai", "elevenlabs", "deepgram"):
        line = next(ln for ln in transcripts.splitlines() if ln.strip().startswith(provider))
        assert "(none)" not in line
    usage = json.loads(out[out.index("{", out.index("usage (what")) :])
    # The bundled sample is 7.75 s of speech, padded to whole 100 ms chunks: 2 cycles per provider.
    assert usage["totals"]["assemblyai"]["billed_seconds"] == 10
    assert usage["totals"]["elevenlabs"]["billed_seconds"] == 10
    assert usage["totals"]["assemblyai"]["cost_usd"] == "0.000416666"
    assert usage["totals"]["elevenlabs"]["cost_usd"] == "0.001083334"
    assert usage["totals"]["deepgram"]["billed_seconds"] == 10
    assert usage["totals"]["deepgram"]["cost_usd"] == "0.001283334"  # 2 × 0.000641667 (0.462 USD/h)
    assert usage["balance_usd"] == "0.997216666"
    assert {s["closed_by"] for s in usage["sessions"]} <= {"client", "upstream"}
    assert not list(tmp_path.iterdir()), "the demo leaves no database behind"
