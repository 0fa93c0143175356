// sttgate live-transcription page: microphone -> AudioWorklet (16 kHz s16le) -> gateway WebSocket -> transcripts.
//
// The page never holds an API key. It asks its own backend (POST token) for a single-use gateway token, then
// connects to the provider-shaped route with ?token=..., speaking that provider's own protocol, so the same code
// works against the provider directly if you swap the URL and token source.
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
    $("rate").textContent = `$${grant.rate_usd_per_hour}/h`;
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
    const body = await response.json();
    if (!response.ok) throw new Error(body.error ? body.error.message : `token request failed (${response.status})`);
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
    if (event.code !== 1000 && !this.stopping) showError(`connection closed: ${event.code} ${event.reason}`);
    this.markEnded();
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
      await Promise.race([this.ended, new Promise((resolve) => setTimeout(resolve, END_TIMEOUT_MS))]);
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

function showError(text) {
  const box = $("error");
  box.hidden = false;
  box.textContent = text;
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
    showError(err.message || String(err));
    setStatus("error", "error");
  }
});

$("stop").addEventListener("click", () => session && session.stop());
