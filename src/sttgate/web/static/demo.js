// sttgate live-transcription page: microphone -> AudioWorklet (16 kHz s16le) -> gateway WebSocket -> transcripts.
//
// The page never holds an API key. It asks its own backend (POST token) for a single-use gateway token, then
// connects to the provider-shaped route with ?token=..., speaking that provider's own protocol, so the same code
// works against the provider directly if you swap the URL and token source.
//
// What can go wrong is said on the page in words (docs/contract.md#demo-page): no secure context (the browser gives
// no microphone to a page served over plain HTTP from another machine), the demo balance spent (402 at the token,
// 4002 during a session), the session limit reached, too many sessions from one address (429).
//
// Running cost: computed here from the audio actually sent and the cycle price the backend reports, with the
// gateway's own rule (each started 5 s of audio is one cycle, SDK §4), in integer nano-dollars.

const SAMPLE_RATE = 16000;
const CYCLE_SECONDS = 5;
const END_TIMEOUT_MS = 5000;

const $ = (id) => document.getElementById(id);

// "0.000208333" -> 208333n nano-dollars; exact, no float.
function usdToNanos(usd) {
  const [whole, frac = ""] = usd.split(".");
  return BigInt(whole) * 1000000000n + BigInt((frac + "000000000").slice(0, 9));
}

function formatUsd(nanos) {
  if (nanos === 0n) return "$0";
  const whole = nanos / 1000000000n;
  const frac = (nanos % 1000000000n).toString().padStart(9, "0");
  return `$${whole}.${frac}`;
}

// Each provider's own framing and messages, behind one small interface: the adapter module the server names on the
// provider's <option> (the server lists the registered providers; see sttgate.providers).
async function loadProvider(option) {
  const module = await import(`./${option.dataset.script}`);
  return { path: option.dataset.path, ...module.default(SAMPLE_RATE) };
}

class Session {
  constructor(option) {
    this.option = option;
    this.providerName = option.value;
    this.samplesSent = 0;
    this.cyclePriceNanos = 0n;
    this.stopping = false;
    this.ended = new Promise((resolve) => (this.markEnded = resolve));
    this.closed = new Promise((resolve) => (this.markClosed = resolve));
  }

  async start() {
    this.provider = await loadProvider(this.option);
    this.decode = this.provider.decoder();
    setStatus("connecting", "asking for the microphone…");
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    setStatus("connecting", "getting a token…");
    const grant = await this.fetchToken();
    this.cyclePriceNanos = usdToNanos(grant.cycle_price_usd);
    this.limitSeconds = grant.max_session_seconds;
    $("rate").textContent = `$${grant.rate_usd_per_hour}/h`;
    $("limit").textContent = `${grant.max_session_seconds} s`;
    renderCost(this);

    const url = new URL(this.provider.path, new URL("..", location.href));
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.search = new URLSearchParams({ ...this.provider.query, token: grant.token }).toString();
    setStatus("connecting", "connecting…");
    this.ws = new WebSocket(url);
    await new Promise((resolve, reject) => {
      this.ws.onopen = resolve;
      this.ws.onerror = () => reject(new Error("the gateway refused the connection"));
    });
    this.ws.onerror = null;
    this.ws.onmessage = (event) => this.onMessage(event);
    this.ws.onclose = (event) => this.onClose(event);

    this.audio = new AudioContext();
    await this.audio.audioWorklet.addModule("static/pcm-worklet.js");
    this.source = this.audio.createMediaStreamSource(this.stream);
    this.worklet = new AudioWorkletNode(this.audio, "pcm-s16le-16k", { processorOptions: { frameMs: 100 } });
    this.flushed = new Promise((resolve) => (this.onFlushed = resolve));
    this.worklet.port.onmessage = (event) => {
      if (event.data === "flushed") this.onFlushed();
      else this.sendPcm(new Int16Array(event.data));
    };
    const mute = this.audio.createGain(); // keep the graph pulled without playing the microphone back
    mute.gain.value = 0;
    this.source.connect(this.worklet).connect(mute).connect(this.audio.destination);
    await this.audio.resume();
    setStatus("live", `live · ${this.providerName}`);
  }

  async fetchToken() {
    const response = await fetch("token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ provider: this.providerName }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw tokenRefusal(response, body);
    return body;
  }

  sendPcm(pcm) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN || pcm.length === 0) return;
    this.ws.send(this.provider.encode(pcm));
    this.samplesSent += pcm.length;
    renderCost(this);
  }

  onMessage(event) {
    if (typeof event.data !== "string") return;
    const result = this.decode(JSON.parse(event.data));
    if (result.kind === "partial" || result.kind === "final") showText(result);
    if (result.kind === "error") showError(result.text);
    if (result.kind === "ended" || (this.stopping && result.endsOnStop)) this.markEnded();
  }

  onClose(event) {
    if (event.code !== 1000 && !this.stopping) showError(closeMessage(event, this.limitSeconds), closeReason(event));
    this.markEnded();
    this.markClosed();
    this.release();
    setStatus(event.code === 1000 || this.stopping ? "ended" : "error", event.code === 1000 ? "ended" : "closed");
  }

  // Graceful end: send the last buffered audio, ask the provider to finish, wait for its answer, then close.
  async stop() {
    this.stopping = true;
    setStatus("stopping", "finishing…");
    if (this.worklet) {
      this.worklet.port.postMessage({ type: "flush", minMs: this.provider.minFrameMs });
      await this.flushed;
    }
    this.stream.getTracks().forEach((track) => track.stop());
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(this.provider.endMessage());
      const deadline = new Promise((resolve) => setTimeout(resolve, END_TIMEOUT_MS));
      await Promise.race([this.ended, deadline]);
      // A provider that closes the session itself after its last message (closesAfterEnd) is left to do so.
      if (this.provider.closesAfterEnd) await Promise.race([this.closed, deadline]);
      if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1000, "User ended session");
    }
    this.release();
    setStatus("ended", "ended");
  }

  release() {
    if (this.source) this.source.disconnect();
    if (this.audio && this.audio.state !== "closed") this.audio.close();
    if (this.stream) this.stream.getTracks().forEach((track) => track.stop());
  }
}

// An error the page explains itself; `reason` is a stable word for it (also on #error as data-reason).
class PageError extends Error {
  constructor(message, reason) {
    super(message);
    this.reason = reason;
  }
}

function tokenRefusal(response, body) {
  const code = body.error ? body.error.code : "";
  if (code === "insufficient_balance") {
    return new PageError(
      "The demo balance is spent: the demo account cannot pay for another session until the operator tops it up.",
      "balance_spent",
    );
  }
  if (code === "rate_limited") {
    const wait = response.headers.get("Retry-After");
    return new PageError(`Too many sessions started from your address; try again in ${wait || "a few"} s.`, code);
  }
  return new PageError(body.error ? body.error.message : `token request failed (${response.status})`, code || "error");
}

function closeReason(event) {
  if (event.code === 4002) return "balance_spent";
  if (event.code === 1008 && event.reason === "session time limit") return "session_limit";
  return "closed";
}

function closeMessage(event, limitSeconds) {
  const reason = closeReason(event);
  if (reason === "balance_spent") {
    return `The demo balance is spent: the gateway ended the session (${event.code} ${event.reason}).`;
  }
  if (reason === "session_limit") {
    return `The demo session reached its limit of ${limitSeconds} s and was ended; press Start for a new one.`;
  }
  return `connection closed: ${event.code} ${event.reason}`;
}

// getUserMedia exists only in a secure context: HTTPS, or http://localhost / 127.0.0.1 on the visitor's own machine.
function insecureContextMessage() {
  return (
    `The microphone needs a secure context, and this page was loaded over plain HTTP from ${location.host}. ` +
    "Open it over HTTPS (put the gateway behind a TLS proxy), or on the gateway's own machine at " +
    "http://localhost or http://127.0.0.1."
  );
}

function setStatus(state, text) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
  const busy = state === "connecting" || state === "live" || state === "stopping";
  $("start").disabled = busy;
  $("provider").disabled = busy;
  $("stop").disabled = state !== "live";
}

function showText({ kind, key, text }) {
  let line = document.querySelector(`[data-key="${key}"]`);
  if (!line) {
    line = document.createElement("p");
    line.dataset.key = key;
    $("finals").append(line);
  }
  line.textContent = text;
  line.className = kind;
  if (kind === "final" && !text) line.remove();
}

function showError(text, reason = "error") {
  const box = $("error");
  box.hidden = false;
  box.textContent = text;
  box.dataset.reason = reason;
}

function renderCost(session) {
  const seconds = session.samplesSent / SAMPLE_RATE;
  const cycles = BigInt(Math.ceil(session.samplesSent / (SAMPLE_RATE * CYCLE_SECONDS)));
  const nanos = cycles * session.cyclePriceNanos;
  $("audio-seconds").textContent = `${seconds.toFixed(1)} s`;
  $("cycles").textContent = String(cycles);
  $("cost").textContent = formatUsd(nanos);
  $("cost").dataset.nanos = nanos.toString();
}

let session = null;

$("start").addEventListener("click", async () => {
  $("finals").replaceChildren();
  $("error").hidden = true;
  session = new Session($("provider").selectedOptions[0]);
  try {
    await session.start();
  } catch (err) {
    session.release();
    showError(err.message || String(err), err.reason);
    setStatus("error", "error");
  }
});

$("stop").addEventListener("click", () => session && session.stop());

if (!window.isSecureContext || !navigator.mediaDevices) {
  showError(insecureContextMessage(), "insecure_context");
  setStatus("unavailable", "no microphone");
  $("start").disabled = true;
}
