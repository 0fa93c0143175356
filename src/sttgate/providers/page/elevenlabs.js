// The live-transcription page's adapter for ElevenLabs Scribe realtime (see sttgate/web/static/demo.js):
// base64 PCM in `input_audio_chunk` JSON frames, an empty committing chunk to end.

function bytesToBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

export default function adapter(sampleRate) {
  return {
    query: { model_id: "scribe_v2_realtime", audio_format: `pcm_${sampleRate}`, commit_strategy: "vad" },
    minFrameMs: 0,
    encode: (pcm) =>
      JSON.stringify({
        message_type: "input_audio_chunk",
        audio_base_64: bytesToBase64(new Uint8Array(pcm.buffer)),
        commit: false,
        sample_rate: sampleRate,
      }),
    // The final commit: an empty chunk with commit=true; the answer is the last committed_transcript.
    endMessage: () =>
      JSON.stringify({ message_type: "input_audio_chunk", audio_base_64: "", commit: true, sample_rate: sampleRate }),
    decoder() {
      let segment = 0;
      let lastCommitted = null;
      return (msg) => {
        switch (msg.message_type) {
          case "partial_transcript": // a partial that repeats the segment just committed is an echo, not news
            if (msg.text === lastCommitted) return { kind: "ignore" };
            return { kind: "partial", key: `segment-${segment}`, text: msg.text };
          case "committed_transcript":
            lastCommitted = msg.text;
            return { kind: "final", key: `segment-${segment++}`, text: msg.text, endsOnStop: true };
          case "commit_throttled": // nothing left to commit when we stopped: that is a clean end too
            return { kind: "ended" };
          default:
            if (/error|exceeded|terms|limit|overflow|invalid/.test(msg.message_type || "")) {
              return { kind: "error", text: msg.error || msg.message_type };
            }
            return { kind: "ignore" };
        }
      };
    },
  };
}
