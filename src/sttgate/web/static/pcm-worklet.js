// AudioWorklet processor: microphone float samples at the context's rate -> 16 kHz mono s16le PCM frames.
//
// Runs on the audio rendering thread, so the main thread only ever sees ready-to-send frames. Each frame is
// `frameMs` of audio (100 ms by default: inside every supported provider's accepted or recommended frame lengths).
// Resampling averages the input samples that fall into each output sample's window (a box low-pass before
// decimation), which keeps speech intelligible without a filter library.

const TARGET_RATE = 16000;

class PcmProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const frameMs = (options && options.processorOptions && options.processorOptions.frameMs) || 100;
    this.step = sampleRate / TARGET_RATE; // input samples per output sample (global `sampleRate` = context rate)
    this.frameSamples = (TARGET_RATE * frameMs) / 1000;
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.acc = 0; // sum of input samples in the current output window
    this.count = 0; // how many input samples are in it
    this.pos = 0; // input position inside the current window, in input samples
    this.port.onmessage = (event) => {
      if (event.data && event.data.type === "flush") this.flush(event.data.minMs || 0);
    };
  }

  push(value) {
    const clamped = Math.max(-1, Math.min(1, value));
    this.frame[this.filled++] = clamped < 0 ? clamped * 0x8000 : clamped * 0x7fff;
    if (this.filled === this.frameSamples) {
      this.port.postMessage(this.frame.buffer, [this.frame.buffer]); // transferred: the buffer is gone from here
      this.frame = new Int16Array(this.frameSamples);
      this.filled = 0;
    }
  }

  // Send what is buffered when the page stops: the last, shorter frame, padded with silence to `minMs` where the
  // provider has a minimum frame length (its page adapter's `minFrameMs`).
  flush(minMs) {
    if (this.filled > 0) {
      const length = Math.max(this.filled, Math.min(this.frameSamples, (TARGET_RATE * minMs) / 1000));
      const last = new Int16Array(length);
      last.set(this.frame.subarray(0, this.filled));
      this.port.postMessage(last.buffer, [last.buffer]);
      this.filled = 0;
    }
    this.port.postMessage("flushed");
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const channels = input.length;
    const length = input[0].length;
    for (let i = 0; i < length; i++) {
      let sample = 0;
      for (let c = 0; c < channels; c++) sample += input[c][i];
      this.acc += sample / channels;
      this.count++;
      this.pos++;
      if (this.pos >= this.step) {
        this.push(this.acc / this.count);
        this.pos -= this.step;
        this.acc = 0;
        this.count = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm-s16le-16k", PcmProcessor);
